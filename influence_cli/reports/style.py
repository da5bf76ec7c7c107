"""The report page's style sheet and its Content-Security-Policy: nothing but this style sheet (by
its hash) and ``data:`` images may load, so no script runs even if some text slipped through."""

from __future__ import annotations

import base64
import hashlib

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:12px 24px}header h1{margin:0;font-size:1.4em}
header .muted{color:#c9d6e3}nav a{color:#fff;margin-right:16px;text-decoration:none;font-weight:600}
main{padding:8px 24px;max-width:1200px}section{margin:24px 0}h2{border-bottom:2px solid #1f3b57}
.muted{color:#777}.note{background:#fff3cd;padding:6px 10px;border-radius:4px}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:8px 0}dl.kv dt{color:#555}
dl.kv dd{margin:0;font-weight:600}
article{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:12px 0}
.subject{display:flex;gap:16px;align-items:flex-start}.subject h3{margin:0 0 4px}
.sides{display:flex;flex-wrap:wrap;gap:8px 40px}h4{margin:8px 0 4px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}
figure.example{min-width:96px;max-width:190px;font-size:11px;text-align:center}
img.thumb{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc;background:#000}
td img.thumb{width:40px;height:40px}
div.thumb{width:88px;max-height:64px;overflow:hidden;font:10px monospace;border:1px solid #ccc;padding:2px;
 text-align:left;word-break:break-all;background:#fff}
div.thumb.none{color:#999;text-align:center}
div.thumb.text{width:180px;max-height:none;font:11px system-ui,sans-serif;word-break:normal;overflow-wrap:anywhere}
div.path,div.described{font-size:10px;color:#555;max-width:190px;word-break:break-all}
figure.plot img{max-width:100%}.row{display:flex;gap:24px;align-items:center;flex-wrap:wrap}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:3px 8px;
 text-align:left;vertical-align:middle}th{background:#eef2f6}tr.flagged td{background:#fdecea}
.alert{color:#c0392b;font-weight:700}.verdict{font-size:1.2em;font-weight:700;padding:6px 10px;border-radius:4px}
.verdict.pass{background:#e3f4e8;color:#1e7b3c}.verdict.fail{background:#fdecea;color:#c0392b}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto}
"""
# Nothing but this style sheet (by its hash) and data: images: no script, no fetch, no form, no base.
CSP = ("default-src 'none'; img-src data:; style-src 'sha256-"
       + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode() + "'; base-uri 'none'; form-action 'none'")
