"""report.html: one self-contained page (images inlined as PNG data URIs, readable offline).

Per face: original (aligned) | reconstruction (tuned generator at w0) | protected | the
protected face pasted back into its photo, with the similarity table; then the metrics.
"""
from __future__ import annotations

import base64
import html
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from clip2protect_jax import image_io

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 6px;
font-size:13px;text-align:right}th{background:#eee}td.l,th.l{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em;margin:.6em 0}
.face{margin:1.2em 0;padding-top:.6em;border-top:2px solid #ddd}img{margin-right:6px}
figure{display:inline-block;margin:0 6px 0 0;text-align:center;font-size:12px}"""


def _data_uri(image_u8: np.ndarray, size: int) -> str:
  img = Image.fromarray(image_u8)
  longest = max(img.size)
  if longest > size:
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
  elif longest < size:  # small (e.g. 64 px demo) faces: enlarge without smoothing
    scale = size // longest
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(image_u8: np.ndarray, caption: str, size: int) -> str:
  return (f'<figure><img src="{_data_uri(image_u8, size)}" alt="{html.escape(caption)}">'
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(v: float) -> str:
  return f"{v:.3f}"


def _cells(by_kind: Mapping[str, float]) -> str:
  """Cells of one reference's similarities (or distances) for the three image kinds."""
  return "".join(f"<td>{_fmt(by_kind[k])}</td>" for k in ("original", "reconstruction",
                                                           "protected"))


def similarity_table(record: Mapping[str, Any], roles: Mapping[str, str],
                     dlib_face: Mapping[str, Any] | None) -> str:
  rows = ["<tr><th class=l>model</th><th class=l>role</th><th>cos→target<br>original</th>"
          "<th>reconstr.</th><th>protected</th><th>cos→source<br>original</th>"
          "<th>reconstr.</th><th>protected</th></tr>"]
  for name, sims in record["similarity"].items():
    t, s = sims["target"], sims["source"]
    rows.append(f"<tr><td class=l>{html.escape(name)}</td><td class=l>{roles.get(name, '')}"
                f"</td>{_cells(t)}{_cells(s)}</tr>")
  if dlib_face:
    t, s = dlib_face["target_distance"], dlib_face["source_distance"]
    rows.append(f"<tr><td class=l>dlib (distance, &lt;0.6 = match)</td><td class=l>victim</td>"
                f"{_cells(t)}{_cells(s)}</tr>")
  return "<table>" + "".join(rows) + "</table>"


def metrics_table(metrics: Mapping[str, Any]) -> str:
  rows = ["<tr><th class=l>model</th><th class=l>role</th><th class=l>image</th>"
          "<th class=l>FAR / threshold</th><th>impersonation PSR</th><th>dodging PSR</th></tr>"]
  for name, entry in metrics.get("models", {}).items():
    for kind, by in entry["by_image"].items():
      # dlib (by["distance"]: its documented operating point) matches below a distance.
      match = "dist &lt;" if "distance" in by else "cos &gt;"
      labelled = [(f"dist &lt; {v} (documented)", r) for v, r in by.get("distance", {}).items()]
      labelled += [(f"FAR {far} ({match} {r['threshold']:.4f})", r)
                   for far, r in by.get("far", {}).items()]
      for label, r in labelled:
        rows.append(f"<tr><td class=l>{html.escape(name)}</td><td class=l>"
                    f"{html.escape(entry['role'].split(' ')[0])}</td><td class=l>{kind}</td>"
                    f"<td class=l>{label}</td><td>{100 * r['impersonation_psr']:.1f}%</td>"
                    f"<td>{100 * r['dodging_psr']:.1f}%</td></tr>")
  return "<table>" + "".join(rows) + "</table>"


def build(config, workdir: str, records: Sequence[Mapping[str, Any]],
          photos: Mapping[str, str], metrics: Mapping[str, Any],
          errors: Sequence[Mapping[str, str]]) -> str:
  """The report's HTML text (the caller writes it atomically)."""
  size = config.report.thumb_size
  roles = {m: "surrogate" for m in config.fr.surrogates}
  roles.update({m: "victim" for m in config.fr.victims})
  weights = metrics.get("weights", {})
  warn = [f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in weights.items()
          if "RANDOM" in v]
  parts = [f"<!doctype html><html><head><meta charset=utf-8><title>clip2protect_jax report"
           f"</title><style>{STYLE}</style></head><body>",
           "<h1>clip2protect_jax: protection report</h1>",
           f"<p>Prompt: <b>{html.escape(config.prompt)}</b> (source text "
           f"“{html.escape(config.source_text)}”); mode: <b>{config.protect.mode}</b>; target "
           f"photo {html.escape(config.target.photo)} (evaluated on "
           f"{html.escape(config.target.eval_photo)}); dodging measured against "
           f"{html.escape(metrics.get('dodging_reference', 'the original photo'))}; "
           f"{len(records)} faces; tuning "
           f"{config.tune.steps} steps ({config.tune.schedule}), search {config.protect.steps}"
           f" steps.</p>"]
  if warn:
    parts.append('<div class=warn><b>Engineering run, not a protection result.</b> These '
                 "components have no trained weights on this machine, so images and "
                 "similarities show the pipeline working, not the method's quality:<br>" +
                 "<br>".join(warn) + "</div>")
  parts.append("<h2>Protection success rates</h2>" + metrics_table(metrics))
  if errors:
    parts.append("<h2>Photos skipped</h2><ul>" + "".join(
        f"<li>{html.escape(e['source'])}: {html.escape(e['error'])}</li>" for e in errors) +
        "</ul>")
  parts.append("<h2>Faces</h2>")
  dlib_faces = metrics.get("dlib_faces", {})
  for r in list(records)[:config.report.max_faces]:
    fid = r["id"]
    imgs = [(os.path.join(workdir, "invert", "aligned", fid + ".png"), "original (aligned)"),
            (os.path.join(workdir, "protect", "reconstructions", fid + ".png"),
             f"reconstruction ({r['psnr']['reconstruction_vs_original']:.1f} dB)"),
            (os.path.join(workdir, "protect", "faces", fid + ".png"),
             f"protected ({r['psnr']['protected_vs_original']:.1f} dB)"),
            (os.path.join(workdir, photos[r["source"]]), "pasted back")]
    figures = "".join(_figure(image_io.read_rgb(p), c, size) for p, c in imgs)
    parts.append(f'<div class=face><h3>{html.escape(fid)}</h3><p>{html.escape(r["source"])}'
                 f"</p>{figures}{similarity_table(r, roles, dlib_faces.get(fid))}</div>")
  if len(records) > config.report.max_faces:
    parts.append(f"<p>… {len(records) - config.report.max_faces} more faces in "
                 "protect/results/.</p>")
  parts.append("</body></html>")
  return "\n".join(parts)
