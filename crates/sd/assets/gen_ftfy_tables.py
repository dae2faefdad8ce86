"""Regenerates ftfy_tables.txt.gz: the data tables of ftfy 6.3.1's text fixers that
src/tokenizer/ftfy.rs needs to reproduce transformers' slow CLIPTokenizer (which runs ftfy.fix_text).

    python3 gen_ftfy_tables.py   # needs ftfy==6.3.1; python 3.11 (html.entities, unicodedata 14.0)

Line formats (code points in hex, space-separated):
    E <entity>\t<code points>      ftfy.chardata.HTML_ENTITIES (`&name;` -> text)
    W <code point>\t<code points>  ftfy.chardata.WIDTH_MAP (full/half-width form -> normal width)
"""
import gzip

from ftfy import chardata


def cps(s):
    return " ".join(f"{ord(c):x}" for c in s)


lines = []
for name, text in chardata.HTML_ENTITIES.items():
    assert "\t" not in name and " " not in name
    lines.append(f"E {name}\t{cps(text)}")
for cp, text in sorted(chardata.WIDTH_MAP.items()):
    lines.append(f"W {cp:x}\t{cps(text)}")
data = ("\n".join(lines) + "\n").encode()
with open("ftfy_tables.txt.gz", "wb") as f:
    # mtime=0 and no file name: the output is reproducible byte for byte
    with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        g.write(data)
print(len(lines), "lines,", len(data), "bytes")
