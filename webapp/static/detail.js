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

// Why it matched: opened from a search (?query=<id> or ?query=upload), the page can draw how
// much each part of both images gave to their cosine (GET or POST /api/images/<id>/explain),
// as heat over the result and over the query. The cells' shares sum to the cosine.
(() => {
  "use strict";
  const panel = document.getElementById("explain");
  const query = new URLSearchParams(location.search).get("query");
  if (!panel || !query || !/^([0-9a-f]{64}|upload|url)$/.test(query)) return;
  // Where search.js keeps the uploaded photo, and the address of an image searched by URL.
  const QUERY_KEY = "imgsearch.query";
  const QUERY_URL_KEY = "imgsearch.query-url";
  const toggle = document.getElementById("explain-toggle");
  const body = document.getElementById("explain-body");
  const status = document.getElementById("explain-status");
  const resultImage = document.getElementById("detail-image");
  const resultHeat = document.getElementById("result-heat");
  const queryImage = document.getElementById("query-image");
  const queryHeat = document.getElementById("query-heat");
  let explanation = null;

  panel.hidden = false;

  function uploadedQuery() {
    // A data: URL made by FileReader; decoded here, as the page may not fetch data: URLs.
    const dataUrl = sessionStorage.getItem(QUERY_KEY);
    if (!dataUrl) return null;
    const [head, base64] = dataUrl.split(",", 2);
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return { url: dataUrl, blob: new Blob([bytes], { type: head.slice(5).split(";")[0] }) };
  }

  async function load() {
    const url = `/api/images/${encodeURIComponent(panel.dataset.id)}/explain`;
    let response;
    if (query === "upload") {
      const photo = uploadedQuery();
      if (!photo) {
        throw new Error("The photo you searched with is not kept in this tab any more (or was " +
          "too large to keep): search with it again, then open this result.");
      }
      const form = new FormData();
      form.append("image", photo.blob, "query");
      response = await fetch(url, { method: "POST", body: form });
      queryImage.src = photo.url;
    } else if (query === "url") {
      const address = sessionStorage.getItem(QUERY_URL_KEY);
      if (!address) {
        throw new Error("The address you searched with is not kept in this tab any more: " +
          "search with it again, then open this result.");
      }
      const form = new FormData();
      form.append("url", address);
      response = await fetch(url, { method: "POST", body: form });
    } else {
      response = await fetch(`${url}?query=${encodeURIComponent(query)}`);
      queryImage.src = `/thumbnails/${encodeURIComponent(query)}.webp`;
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error(data && data.error ? data.error.message
        : `The server answered ${response.status}. Please try again.`);
    }
    // Fetched by the server: the page may not load another site's image, so it comes back.
    if (data.query.thumbnail) queryImage.src = data.query.thumbnail;
    return data;
  }

  // Inferno-like stops: from a transparent deep purple through orange to pale yellow.
  const STOPS = [[0, [60, 15, 110]], [0.55, [230, 95, 45]], [1, [252, 250, 160]]];

  function colour(v) {
    const i = v <= STOPS[1][0] ? 0 : 1;
    const [[a, from], [b, to]] = [STOPS[i], STOPS[i + 1]];
    const t = (v - a) / (b - a);
    return from.map((c, k) => Math.round(c + t * (to[k] - c)));
  }

  // The cells as a small image (one pixel a cell), scaled smoothly over the frame they cover.
  // Shares run from the lowest to the highest of both images, so the two pictures compare.
  function draw(canvas, image, side, [low, high]) {
    const width = image.clientWidth;
    const height = image.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const rows = side.cells.length;
    const cols = side.cells[0].length;
    const grid = document.createElement("canvas");
    grid.width = cols;
    grid.height = rows;
    const g = grid.getContext("2d");
    const pixels = g.createImageData(cols, rows);
    side.cells.flat().forEach((share, i) => {
      const v = Math.max(0, Math.min(1, (share - low) / Math.max(high - low, 1e-12)));
      pixels.data.set([...colour(v), Math.round(255 * (0.15 + 0.65 * v))], i * 4);
    });
    g.putImageData(pixels, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "rgba(15, 18, 30, 0.28)"; // dim what did not count
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    const [x0, y0, x1, y1] = side.frame;
    ctx.drawImage(grid, x0 * canvas.width, y0 * canvas.height, (x1 - x0) * canvas.width,
      (y1 - y0) * canvas.height);
    canvas.hidden = false;
    canvas.dataset.drawn = "true";
  }

  function render() {
    if (!explanation || !toggle.checked) return;
    const cells = (side) => side.cells.flat();
    const all = [...cells(explanation.query), ...cells(explanation.result)];
    const range = [Math.min(...all), Math.max(...all)];
    draw(resultHeat, resultImage, explanation.result, range);
    if (queryImage.complete && queryImage.naturalWidth) draw(queryHeat, queryImage, explanation.query, range);
  }

  toggle.addEventListener("change", async () => {
    body.hidden = !toggle.checked;
    resultHeat.hidden = !toggle.checked || !explanation;
    if (!toggle.checked) return;
    if (!explanation) {
      status.textContent = "Working out which parts matched…";
      try {
        explanation = await load();
      } catch (error) {
        status.textContent = error.message;
        return;
      }
      status.textContent = `Cosine ${explanation.cosine.toFixed(3)}: the sum of what each of the ` +
        `${explanation.grid[0]} × ${explanation.grid[1]} parts of either image gave. ` +
        "Brighter parts gave more.";
    }
    render();
  });
  queryImage.addEventListener("load", render);
  resultImage.addEventListener("load", render);
  window.addEventListener("resize", render);
})();
