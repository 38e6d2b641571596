// The before/after view both pages show (the server's and this device's): the edit as the image, the photo drawn
// over its left part up to a divider the slider moves, and the download link.

export function showCompare(row, beforeUrl, afterUrl, filename) {
  row.innerHTML = `<div class="compare"><img class="after" alt="after" data-testid="result"><img class="before" alt="before">
    <div class="divider"></div><span class="label before">Before</span><span class="label after">After</span>
    <input class="slider" type="range" min="0" max="100" value="50" aria-label="compare before and after"></div>
    <a class="download" download>Download</a>`;
  const compare = row.querySelector(".compare");
  row.querySelector("img.before").src = beforeUrl;
  row.querySelector("img.after").src = afterUrl;
  row.querySelector(".slider").oninput = (e) => compare.style.setProperty("--pos", e.target.value + "%");
  const link = row.querySelector("a.download");
  link.href = afterUrl;
  link.download = filename || "";
}

// The download's name, as the server names it (apps/serve/downloads.py): 'IMG_0042.JPG' -> 'IMG_0042-comic.png'
export function downloadName(name, suffix = "comic") {
  const base = (name || "").split(/[/\\]/).pop();
  const stem = base.replace(/^\.+|\.+$/g, "").includes(".") ? base.slice(0, base.lastIndexOf(".")) : base;
  const safe = stem.replace(/[\x00-\x1f\x7f"*/:<>?\\|]+/g, "_").replace(/^[ ._]+|[ ._]+$/g, "").slice(0, 100);
  return `${safe || "photo"}-${suffix}.png`;
}
