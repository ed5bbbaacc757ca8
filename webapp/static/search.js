// The search page: pick, drop or paste a photo (or open ?like=<id>), then show the
// neighbours that the JSON API returns. Data from the server only ever reaches the page
// through textContent and attributes, never as HTML.
(() => {
  "use strict";

  const root = document.getElementById("search");
  const filters = document.getElementById("filters");
  const fileInput = document.getElementById("file-input");
  const dropzone = document.getElementById("dropzone");
  const queryFrame = document.getElementById("query-frame");
  const preview = document.getElementById("query-preview");
  const caption = document.getElementById("query-caption");
  const message = document.getElementById("message");
  const status = document.getElementById("status");
  const kSelect = document.getElementById("k");
  const results = document.getElementById("results");
  const loadMore = document.getElementById("load-more");
  const template = document.getElementById("card-template");

  const maxBytes = Number(root.dataset.maxBytes);
  const MAX_OFFSET = 1000; // the API's limit on paging

  const state = {
    file: null, // the uploaded photo, kept so that filter changes can re-run the search
    like: root.dataset.like || null, // or the id of an indexed image ("more like this")
    shown: 0,
    objectUrl: null,
    request: null,
  };

  // -- parameters ---------------------------------------------------------------------

  function filterParams() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(filters)) {
      if (value !== "") params.append(name, value);
    }
    return params;
  }

  function pageUrl(like) {
    const params = new URLSearchParams();
    if (like) params.set("like", like);
    for (const [name, value] of filterParams()) params.append(name, value);
    params.set("k", kSelect.value);
    return `${location.pathname}?${params}`;
  }

  function syncUrl() {
    // Filters, k and a "like" query live in the address, so reloading or sharing keeps them.
    history.replaceState(null, "", pageUrl(state.like));
  }

  // -- talking to the API -------------------------------------------------------------

  function send(k, offset, signal) {
    const params = filterParams();
    params.set("k", k);
    params.set("offset", offset);
    if (state.file) {
      const body = new FormData();
      body.append("image", state.file, state.file.name || "pasted-image");
      for (const [name, value] of params) body.append(name, value);
      return fetch("/api/search", { method: "POST", body, signal });
    }
    return fetch(`/api/images/${encodeURIComponent(state.like)}/similar?${params}`, { signal });
  }

  async function search({ append = false } = {}) {
    if (!state.file && !state.like) return;
    const k = Number(kSelect.value);
    const offset = append ? state.shown : 0;
    if (state.request) state.request.abort(); // only the latest question matters
    const controller = new AbortController();
    state.request = controller;
    clearMessage();
    setBusy(true, append);
    try {
      const response = await send(k, offset, controller.signal);
      const data = await response.json().catch(() => null);
      if (controller !== state.request) return;
      if (!response.ok) {
        showMessage(
          data && data.error
            ? data.error.message
            : `The server answered ${response.status} ${response.statusText}. Please try again.`,
        );
        if (!append) clearResults();
        return;
      }
      show(data, append, k, offset);
    } catch (error) {
      if (error.name === "AbortError") return;
      showMessage("The server could not be reached. Check that it is running and try again.");
    } finally {
      if (controller === state.request) {
        state.request = null;
        setBusy(false, append);
      }
    }
  }

  // -- rendering ----------------------------------------------------------------------

  function show(data, append, k, offset) {
    if (!append) results.replaceChildren();
    const cards = document.createDocumentFragment();
    for (const hit of data.hits) cards.append(card(hit));
    results.append(cards);
    state.shown = offset + data.hits.length;
    loadMore.hidden = data.hits.length < k || state.shown > MAX_OFFSET;
    showStatus(data.timings_ms);
    if (!append && state.file && data.query.width) {
      setCaption(
        "Your photo",
        [state.file.name, `${data.query.width} × ${data.query.height}`, data.query.format,
          formatBytes(state.file.size)],
      );
    }
  }

  function card(hit) {
    const node = template.content.firstElementChild.cloneNode(true);
    const meta = hit.metadata || {};
    node.dataset.id = hit.id;
    node.dataset.label = meta.label || "";

    const link = node.querySelector(".card-image");
    link.href = hit.detail_url;
    const img = link.querySelector("img");
    img.alt = hit.file_name || "";
    img.addEventListener("error", () => node.classList.add("no-thumbnail"), { once: true });
    img.src = hit.thumbnail_url;

    const score = node.querySelector(".score");
    score.textContent = hit.cosine.toFixed(3);
    node.querySelector(".score-bar span").style.width =
      `${Math.round(Math.max(0, Math.min(1, hit.cosine)) * 100)}%`;

    const label = node.querySelector(".label");
    if (meta.label) label.textContent = meta.label;
    else label.remove();

    const name = node.querySelector(".file-name");
    name.textContent = hit.file_name || hit.id;
    name.href = hit.detail_url;
    name.title = hit.path || "";

    if (meta.width) node.querySelector(".dims").textContent = `${meta.width} × ${meta.height}`;
    if (meta.byte_size) node.querySelector(".bytes").textContent = formatBytes(meta.byte_size);
    node.querySelector(".more-like").href = pageUrl(hit.id);
    return node;
  }

  function showStatus(t) {
    status.replaceChildren();
    if (state.shown === 0) {
      status.textContent = filterParams().toString()
        ? "No indexed image matches these filters."
        : "No results.";
      return;
    }
    const count = document.createElement("strong");
    count.textContent = `${state.shown} ${state.shown === 1 ? "result" : "results"}`;
    const timing = document.createElement("span");
    timing.className = "timings";
    const parts = [["decode", t.decode], ["embed", t.embed], ["search", t.search]]
      .filter(([, ms]) => ms > 0)
      .map(([name, ms]) => `${name} ${Math.round(ms)} ms`);
    timing.textContent = ` in ${Math.round(t.total)} ms` + (parts.length ? ` (${parts.join(" · ")})` : "");
    status.append(count, timing);
  }

  function setCaption(title, details, link) {
    const heading = document.createElement("strong");
    heading.textContent = title;
    const parts = [heading];
    if (link) {
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      parts.push(" ", a);
    }
    const info = details.filter(Boolean).join(" · ");
    if (info) {
      const small = document.createElement("span");
      small.className = "query-details";
      small.textContent = info;
      parts.push(small);
    }
    caption.replaceChildren(...parts);
    caption.hidden = false;
  }

  function showQuery(src) {
    preview.src = src;
    queryFrame.hidden = false;
    dropzone.classList.add("has-image");
  }

  function setBusy(busy, append) {
    root.classList.toggle("busy", busy && !append);
    results.setAttribute("aria-busy", String(busy));
    loadMore.disabled = busy;
    if (busy && !append) status.textContent = "Searching…";
  }

  function clearResults() {
    results.replaceChildren();
    loadMore.hidden = true;
    status.textContent = "";
    state.shown = 0;
  }

  function showMessage(text) {
    message.textContent = text;
    message.hidden = false;
  }

  function clearMessage() {
    message.hidden = true;
    message.textContent = "";
  }

  function formatBytes(n) {
    // The same units as the server's pages (1 KB = 1024 bytes).
    for (const [unit, size] of [["MB", 1024 * 1024], ["KB", 1024]]) {
      if (n >= size) return `${(n / size).toFixed(1).replace(/\.0$/, "")} ${unit}`;
    }
    return `${n} bytes`;
  }

  // -- choosing the query -------------------------------------------------------------

  function useFile(file) {
    if (!file) return;
    if (file.size > maxBytes) {
      showMessage(
        `That file is ${formatBytes(file.size)}; the limit is ${root.dataset.maxLabel}. ` +
          "Choose a smaller image.",
      );
      return;
    }
    state.file = file;
    state.like = null;
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    showQuery(state.objectUrl);
    setCaption("Your photo", [file.name, formatBytes(file.size)]);
    syncUrl();
    search();
  }

  async function useLike(id) {
    showQuery(`/thumbnails/${encodeURIComponent(id)}.webp`);
    setCaption("More like an indexed image", []);
    search();
    try {
      const response = await fetch(`/api/images/${encodeURIComponent(id)}`);
      if (!response.ok) return; // the search itself reports unknown ids
      const image = await response.json();
      setCaption("More like", [image.metadata.label], {
        href: image.detail_url, text: image.file_name || id,
      });
    } catch {
      // The caption is a nicety; the results are what matter.
    }
  }

  function imageFrom(dataTransfer) {
    const files = Array.from((dataTransfer && dataTransfer.files) || []);
    return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
  }

  fileInput.addEventListener("change", () => {
    useFile(fileInput.files[0]);
    fileInput.value = ""; // so that choosing the same file again still triggers a search
  });

  // Drops anywhere on the page count, so a near miss never navigates away to the file.
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!event.dataTransfer.types.includes("Files")) return;
    dragDepth += 1;
    dropzone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) dropzone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    dropzone.classList.remove("dragging");
    const file = imageFrom(event.dataTransfer);
    if (file) useFile(file);
    else showMessage("Drop an image file from your computer (links from other pages are not supported).");
  });

  document.addEventListener("paste", (event) => {
    const file = imageFrom(event.clipboardData);
    if (!file) return; // ordinary text pasted into a filter field
    event.preventDefault();
    useFile(file);
  });

  preview.addEventListener("error", () => {
    queryFrame.hidden = true; // not something the browser can show; the server will say why
    dropzone.classList.remove("has-image");
  });

  // -- filters and paging -------------------------------------------------------------

  filters.addEventListener("change", () => {
    syncUrl();
    search();
  });
  filters.addEventListener("submit", (event) => event.preventDefault());

  document.getElementById("clear-filters").addEventListener("click", () => {
    for (const input of filters.querySelectorAll("input")) {
      if (input.type === "checkbox") input.checked = false;
      else input.value = "";
    }
    syncUrl();
    search();
  });

  kSelect.addEventListener("change", () => {
    syncUrl();
    search();
  });

  loadMore.addEventListener("click", () => search({ append: true }));

  if (state.like) useLike(state.like);
})();
