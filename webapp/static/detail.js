// The detail page shows the original file when the browser can display it, and falls back
// to the thumbnail when the file has moved or changed since it was indexed.
(() => {
  "use strict";
  const img = document.getElementById("detail-image");
  const fallback = img && img.dataset.fallback;
  if (!fallback) return;
  const useThumbnail = () => {
    if (img.getAttribute("src") !== fallback) img.src = fallback;
  };
  img.addEventListener("error", useThumbnail, { once: true });
  if (img.complete && img.naturalWidth === 0) useThumbnail(); // failed before this ran
})();
