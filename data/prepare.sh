#!/bin/sh
# Prepares the built-in corpus from Debian's `fortunes` package (plain text
# quotations, about 2.5 MB): every fortune file except the ASCII-art one is
# cleaned to printable ASCII (overstrike sequences "X<backspace>" removed, tabs
# to spaces, other bytes dropped), fortunes are separated by a blank line, and
# every 20th fortune goes to the validation split.
#   writes data/train.txt and data/val.txt (about 2.3 MB and 0.12 MB)
set -e
src=/usr/share/games/fortunes
cd "$(dirname "$0")"
if [ ! -r "$src/fortunes" ]; then
    echo "error: $src/fortunes not found: install Debian's fortunes package (apt-get install fortunes)" >&2
    exit 1
fi
files=$(ls "$src" | grep -v '\.' | grep -v '^ascii-art$' | sort)
for f in $files; do cat "$src/$f"; echo "%"; done |
    LC_ALL=C sed 's/.\x08//g' |
    LC_ALL=C tr '\t' ' ' |
    LC_ALL=C tr -cd '\n\40-\176' |
    LC_ALL=C awk -v train=train.txt.tmp -v val=val.txt.tmp '
        BEGIN { n = 0; text = "" }
        /^%$/ { if (text != "") { out = (n % 20 == 19) ? val : train; printf "%s\n\n", text > out; n++ }; text = ""; next }
        { sub(/[ ]+$/, ""); text = (text == "") ? $0 : text "\n" $0 }
        END { print n " fortunes" > "/dev/stderr" }'
mv train.txt.tmp train.txt
mv val.txt.tmp val.txt
echo "data/train.txt: $(wc -c < train.txt) bytes, data/val.txt: $(wc -c < val.txt) bytes"
