// tools/chart.h: line charts as PNG (stb_image_write), for the loss curve and the
// recall results (with error bars for the spread over seeds). Labels use a 3x5
// pixel font of upper-case letters, digits and a few signs, drawn at twice the size.
#pragma once
#include "../model.h"
#include <stb_image_write.h>

struct Series {
    std::string name;
    std::vector<float> x, y;
    uint32_t rgb;  // 0xRRGGBB
    std::vector<float> err = {};  // a bar of y ± err[i] at each point (e.g. one sd); empty: none
};

struct Canvas {
    int w, h;
    std::vector<uint8_t> px;  // RGB
    void set(int x, int y, uint32_t c) {
        if (x < 0 || y < 0 || x >= w || y >= h) return;
        size_t i = 3 * ((size_t)y * w + x);
        if (i + 2 >= px.size()) return;
        px[i] = c >> 16; px[i + 1] = (c >> 8) & 255; px[i + 2] = c & 255;
    }
    void line(int x0, int y0, int x1, int y1, uint32_t c) {  // Bresenham, 2 px thick
        int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
        for (;;) {
            set(x0, y0, c); set(x0 + 1, y0, c); set(x0, y0 + 1, c);
            if (x0 == x1 && y0 == y1) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; x0 += sx; }
            if (e2 <= dx) { err += dx; y0 += sy; }
        }
    }
    // text, upper-cased; each glyph is 15 bits, 5 rows of 3, top row first
    void text(int x, int y, const std::string &s, uint32_t c) {
        static const char *chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:/()%=,+";
        static const uint16_t glyphs[] = {
            0x7B6F, 0x2C97, 0x73E7, 0x73CF, 0x5BC9, 0x79CF, 0x79EF, 0x7249, 0x7BEF, 0x7BCF, 0x2BED, 0x6BAE,
            0x3923, 0x6B6E, 0x79A7, 0x79A4, 0x396B, 0x5BED, 0x7497, 0x126A, 0x5BAD, 0x4927, 0x5FED, 0x6B6D,
            0x2B6A, 0x6BA4, 0x2B73, 0x6BAD, 0x388E, 0x7492, 0x5B6F, 0x5B6A, 0x5BFD, 0x5AAD, 0x5A92, 0x72A7,
            0x0002, 0x01C0, 0x0410, 0x12A4, 0x2922, 0x224A, 0x52A5, 0x0E38, 0x0014, 0x05D0};
        for (char ch : s) {
            const char *at = strchr(chars, toupper((unsigned char)ch));
            if (ch != ' ' && at && *at) {
                uint16_t g = glyphs[at - chars];
                for (int r = 0; r < 5; r++)
                    for (int col = 0; col < 3; col++)
                        if (g >> (14 - 3 * r - col) & 1)
                            for (int k = 0; k < 4; k++) set(x + 2 * col + k % 2, y + 2 * r + k / 2, c);
            }
            x += 8;
        }
    }
};

inline std::string fmt_tick(double v) {
    if (fabs(v) >= 10000) return strf("%.0fK", v / 1000);
    if (fabs(v) >= 100 || v == floor(v)) return strf("%.0f", v);
    return strf("%.2f", v);
}

// A line chart of the series (points joined in order). log_x: log2 axis.
// "" on success, else the reason.
// y_lo, y_hi: a fixed y range (e.g. 0..100 for accuracies); NAN = from the data.
inline std::string write_line_chart(const std::string &path, const std::string &title, const std::string &xlabel,
                                    const std::string &ylabel, const std::vector<Series> &series, bool log_x = false,
                                    float y_lo = NAN, float y_hi = NAN) {
    Canvas cv{720, 440, std::vector<uint8_t>(720 * 440 * 3, 255)};
    int left = 70, right = 20, top = 48, bottom = 50, pw = cv.w - left - right, ph = cv.h - top - bottom;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    auto X = [&](double x) { return log_x ? log2(std::max(x, 1e-30)) : x; };
    for (const Series &s : series)
        for (size_t i = 0; i < s.x.size(); i++) {
            if (!std::isfinite(s.y[i])) continue;
            double e = i < s.err.size() && std::isfinite(s.err[i]) ? s.err[i] : 0;
            x0 = std::min(x0, X(s.x[i])); x1 = std::max(x1, X(s.x[i]));
            y0 = std::min(y0, s.y[i] - e); y1 = std::max(y1, s.y[i] + e);
        }
    if (x0 > x1) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) { y0 -= 0.5; y1 += 0.5; }
    double pad = 0.05 * (y1 - y0);
    y0 -= pad; y1 += pad;
    if (std::isfinite(y_lo)) y0 = y_lo;
    if (std::isfinite(y_hi)) y1 = y_hi;
    auto px = [&](double x) { return left + (int)((X(x) - x0) / (x1 - x0) * pw); };
    auto py = [&](double y) { return top + ph - (int)((y - y0) / (y1 - y0) * ph); };
    uint32_t grey = 0xDDDDDD, black = 0x000000;
    for (int i = 0; i <= 4; i++) {  // grid and ticks
        int gy = top + ph * i / 4, gx = left + pw * i / 4;
        cv.line(left, gy, left + pw, gy, grey);
        cv.line(gx, top, gx, top + ph, grey);
        std::string ty = fmt_tick(y1 - (y1 - y0) * i / 4);
        cv.text(left - 8 - 8 * (int)ty.size(), gy - 5, ty, black);
        double xv = x0 + (x1 - x0) * i / 4;
        std::string tx = fmt_tick(log_x ? exp2(xv) : xv);
        cv.text(gx - 4 * (int)tx.size(), top + ph + 8, tx, black);
    }
    cv.line(left, top, left, top + ph, black);
    cv.line(left, top + ph, left + pw, top + ph, black);
    for (const Series &s : series)
        for (size_t i = 0; i + 1 < s.x.size(); i++)
            if (std::isfinite(s.y[i]) && std::isfinite(s.y[i + 1]))
                cv.line(px(s.x[i]), py(s.y[i]), px(s.x[i + 1]), py(s.y[i + 1]), s.rgb);
    for (const Series &s : series)  // mark the points of short series, so single points show
        for (size_t i = 0; s.x.size() <= 64 && i < s.x.size(); i++)
            if (std::isfinite(s.y[i]))
                for (int d = -2; d <= 2; d++) { cv.set(px(s.x[i]) + d, py(s.y[i]), s.rgb); cv.set(px(s.x[i]), py(s.y[i]) + d, s.rgb); }
    for (const Series &s : series)  // error bars: a vertical line with caps, kept inside the plot
        for (size_t i = 0; i < s.x.size() && i < s.err.size(); i++) {
            if (!std::isfinite(s.y[i]) || !(s.err[i] > 0)) continue;
            int x = px(s.x[i]), lo = py(std::max(y0, (double)s.y[i] - s.err[i])), hi = py(std::min(y1, (double)s.y[i] + s.err[i]));
            cv.line(x, lo, x, hi, s.rgb);
            cv.line(x - 4, lo, x + 4, lo, s.rgb);
            cv.line(x - 4, hi, x + 4, hi, s.rgb);
        }
    cv.text(left, 8, title, black);
    cv.text(left + pw / 2 - 4 * (int)xlabel.size(), cv.h - 18, xlabel, black);
    cv.text(8, 26, ylabel, black);
    int ly = top + 8;
    for (const Series &s : series) {  // legend, top right
        int lx = left + pw - 8 * (int)s.name.size() - 30;
        cv.line(lx, ly + 4, lx + 16, ly + 4, s.rgb);
        cv.text(lx + 22, ly, s.name, black);
        ly += 16;
    }
    // encoded in memory, then written atomically: stbi_write_png does not
    // check its writes, so on a full disk it would report success
    std::vector<uint8_t> png;
    auto put = [](void *ctx, void *data, int n) { ((std::vector<uint8_t> *)ctx)->insert(((std::vector<uint8_t> *)ctx)->end(), (uint8_t *)data, (uint8_t *)data + n); };
    if (!stbi_write_png_to_func(put, &png, cv.w, cv.h, 3, cv.px.data(), cv.w * 3)) return "cannot encode " + path;
    return write_file_atomic(path, {{png.data(), png.size()}});
}
