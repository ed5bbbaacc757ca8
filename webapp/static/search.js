// The search page: pick, drop or paste a photo, paste an image URL (or open ?like=<id>), or
// type words (alone, or to re-rank a photo's neighbours), then show what the JSON API returns. Data from the server only ever reaches
// the page through textContent and attributes, never as HTML.
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
  const urlForm = document.getElementById("url-form");
  const urlInput = document.getElementById("url-input");
  const wordsForm = document.getElementById("words-form");
  const wordsInput = document.getElementById("words-input");
  const wordsHint = document.getElementById("words-hint");
  // Present only when the index has region vectors (the page says so).
  const boxEditor = document.getElementById("box-editor");
  const feedbackBar = document.getElementById("feedback-bar");

  const maxBytes = Number(root.dataset.maxBytes);
  const MAX_OFFSET = 1000; // the API's limit on paging

  const state = {
    file: null, // the uploaded photo, kept so that filter changes can re-run the search
    like: root.dataset.like || null, // or the id of an indexed image ("more like this")
    url: null, // or the address of an image, which the server fetches
    words: root.dataset.words || null, // words: alone, or re-ranking the photo's neighbours
    shown: 0,
    objectUrl: null,
    request: null,
    box: null, // [x0, y0, x1, y1] as fractions of the photo: search with that part only
    marks: new Map(), // id -> "like" | "unlike": results marked good or bad on this query
    applied: new Map(), // the marks the shown results were refined with (sent on paging too)
  };
  // The uploaded photo, for the detail page to explain a match against (detail.js).
  const QUERY_KEY = "imgsearch.query";
  const QUERY_URL_KEY = "imgsearch.query-url";

  // -- parameters ---------------------------------------------------------------------

  function filterParams() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(filters)) {
      if (value !== "") params.append(name, value);
    }
    return params;
  }

  function pageUrl(like, url = null, words = null) {
    const params = new URLSearchParams();
    if (like) params.set("like", like);
    if (url) params.set("url", url);
    if (words && !like) params.set("q", words);
    for (const [name, value] of filterParams()) params.append(name, value);
    params.set("k", kSelect.value);
    return `${location.pathname}?${params}`;
  }

  function syncUrl() {
    // Filters, k and a "like" or "url" query live in the address, so reloading or sharing
    // keeps them.
    history.replaceState(null, "", pageUrl(state.like, state.url, state.words));
  }

  // -- talking to the API -------------------------------------------------------------

  function send(k, offset, signal) {
    const params = filterParams();
    params.set("k", k);
    params.set("offset", offset);
    if (!state.box) {
      for (const [id, mark] of state.applied) params.append(mark, id);
    }
    if (state.file) {
      const body = new FormData();
      body.append("image", state.file, state.file.name || "pasted-image");
      for (const [name, value] of params) body.append(name, value);
      if (state.box) body.append("box", state.box.map((v) => v.toFixed(4)).join(","));
      if (state.words) body.append("q", state.words);
      return fetch("/api/search", { method: "POST", body, signal });
    }
    if (state.url) {
      const body = new FormData();
      body.append("url", state.url);
      for (const [name, value] of params) body.append(name, value);
      if (state.words) body.append("q", state.words);
      return fetch("/api/search", { method: "POST", body, signal });
    }
    if (state.words && !state.like) {
      const body = new FormData();
      body.append("q", state.words);
      for (const [name, value] of params) {
        if (name !== "like" && name !== "unlike") body.append(name, value);
      }
      return fetch("/api/search", { method: "POST", body, signal });
    }
    return fetch(`/api/images/${encodeURIComponent(state.like)}/similar?${params}`, { signal });
  }

  async function search({ append = false } = {}) {
    if (!state.file && !state.like && !state.url && !state.words) return;
    // Marks refine whole-photo searches only (the API refuses them with a box).
    root.classList.toggle("boxed", Boolean(state.box));
    showMarks();
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
    if (!append) showWords(data.query.words);
    if (!append && state.file && data.query.box) {
      setCaption("The part of your photo you marked", [state.file.name, `${data.query.regions} regions`]);
    } else if (!append && state.url && data.query.width) {
      setCaption(
        "Image from a URL",
        [data.query.url, `${data.query.width} × ${data.query.height}`, data.query.format],
      );
    } else if (!append && state.file && data.query.width) {
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
    link.href = detailUrl(hit);
    const img = link.querySelector("img");
    img.alt = hit.file_name || "";
    img.addEventListener("error", () => node.classList.add("no-thumbnail"), { once: true });
    img.src = hit.thumbnail_url;

    // Words alone: how likely the model thinks the image shows them; else the cosine.
    const score = node.querySelector(".score");
    const value = hit.cosine === null ? hit.score : hit.cosine;
    score.textContent = value.toFixed(3);
    if (hit.cosine === null) score.title = "How likely the model thinks it shows the words";
    node.querySelector(".score-bar span").style.width =
      `${Math.round(Math.max(0, Math.min(1, value)) * 100)}%`;

    const tags = node.querySelector(".card-tags");
    for (const name of hit.model_classes || []) {
      const tag = document.createElement("a");
      tag.className = "tag";
      tag.textContent = name;
      tag.href = pageUrl(null, null, name);
      tag.title = `Seen by the model: search for "${name}"`;
      tags.append(tag);
    }

    const label = node.querySelector(".label");
    if (meta.label) label.textContent = meta.label;
    else label.remove();

    const name = node.querySelector(".file-name");
    name.textContent = hit.file_name || hit.id;
    name.href = detailUrl(hit);
    name.title = hit.path || "";

    if (hit.region && meta.width) showRegion(node.querySelector(".card-region"), hit.region.box, meta);
    if (meta.width) node.querySelector(".dims").textContent = `${meta.width} × ${meta.height}`;
    if (meta.byte_size) node.querySelector(".bytes").textContent = formatBytes(meta.byte_size);
    node.querySelector(".more-like").href = pageUrl(hit.id);
    for (const button of node.querySelectorAll(".mark")) {
      button.setAttribute("aria-pressed", String(state.marks.get(hit.id) === button.dataset.mark));
      button.addEventListener("click", () => toggleMark(node, hit.id, button.dataset.mark));
    }
    return node;
  }

  // The detail page explains why a result matched the query it was found with: an indexed
  // image's id, or "upload" for the photo kept in sessionStorage. Boxes are not explained.
  function detailUrl(hit) {
    const query = state.box ? null : state.file ? "upload" : state.url ? "url" : state.like;
    return query ? `${hit.detail_url}?query=${encodeURIComponent(query)}` : hit.detail_url;
  }

  // -- more / less like these (relevance feedback) ----------------------------------------

  function toggleMark(node, id, mark) {
    if (state.marks.get(id) === mark) state.marks.delete(id);
    else state.marks.set(id, mark);
    for (const button of node.querySelectorAll(".mark")) {
      button.setAttribute("aria-pressed", String(state.marks.get(id) === button.dataset.mark));
    }
    showMarks();
  }

  function showMarks() {
    const count = (mark) => [...state.marks.values()].filter((m) => m === mark).length;
    const changed = state.marks.size !== state.applied.size ||
      [...state.marks].some(([id, mark]) => state.applied.get(id) !== mark);
    feedbackBar.hidden = state.marks.size === 0 && state.applied.size === 0;
    document.getElementById("feedback-count").textContent =
      `${count("like")} good · ${count("unlike")} bad` +
      (changed ? "" : " · results refined with these marks");
    document.getElementById("feedback-apply").disabled = !changed || Boolean(state.box);
  }

  function clearMarks() {
    state.marks.clear();
    state.applied.clear();
    showMarks();
  }

  document.getElementById("feedback-apply").addEventListener("click", () => {
    state.applied = new Map(state.marks);
    showMarks();
    search();
  });
  document.getElementById("feedback-clear").addEventListener("click", () => {
    const refined = state.applied.size > 0;
    clearMarks();
    if (refined) search();
    else for (const button of results.querySelectorAll(".mark")) button.setAttribute("aria-pressed", "false");
  });

  // The matched region on a card's thumbnail. The thumbnail is the whole image, contained in
  // a 4:5 frame, so the box is placed from the image's aspect ratio alone, in percentages.
  const FRAME_ASPECT = 4 / 5;

  function showRegion(element, box, meta) {
    const aspect = meta.width / meta.height;
    const w = aspect > FRAME_ASPECT ? 1 : aspect / FRAME_ASPECT; // image size in the frame
    const h = aspect > FRAME_ASPECT ? FRAME_ASPECT / aspect : 1;
    const [x0, y0, x1, y1] = box;
    place(element, [(1 - w) / 2 + x0 * w, (1 - h) / 2 + y0 * h, (1 - w) / 2 + x1 * w,
      (1 - h) / 2 + y1 * h]);
  }

  function place(element, [x0, y0, x1, y1]) {
    element.style.left = `${x0 * 100}%`;
    element.style.top = `${y0 * 100}%`;
    element.style.width = `${(x1 - x0) * 100}%`;
    element.style.height = `${(y1 - y0) * 100}%`;
    element.hidden = false;
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
    count.textContent = `${state.shown} ${state.shown === 1 ? "result" : "results"}` +
      (state.box ? " for the marked part" : "");
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

  // What the server made of the words: unknown ones, with the nearest known words offered.
  function showWords(words) {
    wordsHint.replaceChildren();
    wordsHint.hidden = true;
    if (!words || !words.unknown.length) return;
    const parts = [`Not a word the model knows: ${words.unknown.join(", ")}.`];
    const offered = [...new Set(Object.values(words.suggestions).flat())];
    wordsHint.append(parts[0]);
    if (offered.length) {
      wordsHint.append(" Did you mean ");
      offered.forEach((word, i) => {
        const link = document.createElement("a");
        link.href = pageUrl(null, null, word);
        link.textContent = word;
        link.addEventListener("click", (event) => {
          event.preventDefault();
          wordsInput.value = word;
          useWords(word);
        });
        wordsHint.append(link, i < offered.length - 1 ? ", " : "?");
      });
    }
    wordsHint.hidden = false;
  }

  // Words with a photo or URL on show re-rank its neighbours; otherwise they are the query.
  function useWords(text) {
    const words = text.trim() || null;
    if (!words && !state.words) return;
    state.words = words;
    if (state.like) {
      state.like = null; // "more like this" takes no words: the words become the query
      queryFrame.hidden = true;
      dropzone.classList.remove("has-image");
      caption.hidden = true;
    }
    clearMarks();
    syncUrl();
    if (state.file || state.url || state.words) search();
    else clearResults();
  }

  wordsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useWords(wordsInput.value);
  });

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
    state.url = null;
    clearMarks();
    rememberQuery(file);
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    showQuery(state.objectUrl);
    resetBox(state.objectUrl);
    setCaption("Your photo", [file.name, formatBytes(file.size)]);
    syncUrl();
    search();
  }

  function rememberQuery(file) {
    sessionStorage.removeItem(QUERY_KEY);
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      try {
        sessionStorage.setItem(QUERY_KEY, reader.result);
      } catch {
        // Over the storage quota (a photo of several MB): the detail page says so.
      }
    });
    reader.readAsDataURL(file);
  }

  function useUrl(text) {
    const url = text.trim();
    if (!url) {
      showMessage("Paste the address of an image, starting with http:// or https://.");
      return;
    }
    state.url = url;
    state.file = null;
    state.like = null;
    clearMarks();
    sessionStorage.setItem(QUERY_URL_KEY, url); // for the detail page, as an upload is
    // The Content-Security-Policy keeps other sites' images off this page, so the query is
    // shown as its address only.
    queryFrame.hidden = true;
    dropzone.classList.remove("has-image");
    resetBox(null);
    setCaption("Image from a URL", [url]);
    syncUrl();
    search();
  }

  async function useLike(id) {
    showQuery(`/thumbnails/${encodeURIComponent(id)}.webp`);
    resetBox(null); // boxes are drawn on uploaded photos
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

  urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useUrl(urlInput.value);
  });

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
    if (!file) {
      // An image's address pasted outside any field searches with it, as the URL field does;
      // text pasted into a field (a filter, the URL field itself) is left to the field.
      const text = event.clipboardData ? event.clipboardData.getData("text/plain").trim() : "";
      if (event.target.closest("input, select, textarea") || !/^https?:\/\//i.test(text)) return;
      event.preventDefault();
      urlInput.value = text;
      useUrl(text);
      return;
    }
    event.preventDefault();
    useFile(file);
  });

  preview.addEventListener("error", () => {
    queryFrame.hidden = true; // not something the browser can show; the server will say why
    dropzone.classList.remove("has-image");
  });

  // -- filters and paging -------------------------------------------------------------

  // On a phone the filters are a panel opened from the toolbar, whose button counts the
  // filters that apply (style.css shows it below 820 px only).
  const sidebar = document.getElementById("sidebar");
  const filtersToggle = document.getElementById("filters-toggle");

  function countFilters() {
    const active = new Set([...filterParams().keys()].map((n) => n.replace(/^(min|max)_/, "")));
    filtersToggle.textContent = active.size ? `Filters (${active.size})` : "Filters";
  }

  function openFilters(open) {
    sidebar.classList.toggle("open", open);
    filtersToggle.setAttribute("aria-expanded", String(open));
    if (open) sidebar.querySelector("input, button")?.focus();
  }

  filtersToggle.addEventListener("click", () => openFilters(!sidebar.classList.contains("open")));
  document.getElementById("filters-done").addEventListener("click", () => {
    openFilters(false);
    filtersToggle.focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && sidebar.classList.contains("open")) openFilters(false);
  });
  countFilters();

  filters.addEventListener("change", () => {
    countFilters();
    syncUrl();
    search();
  });
  filters.addEventListener("submit", (event) => event.preventDefault());

  document.getElementById("clear-filters").addEventListener("click", () => {
    for (const input of filters.querySelectorAll("input")) {
      if (input.type === "checkbox") input.checked = false;
      else input.value = "";
    }
    countFilters();
    syncUrl();
    search();
  });

  kSelect.addEventListener("change", () => {
    syncUrl();
    search();
  });

  loadMore.addEventListener("click", () => search({ append: true }));

  // -- a box on the query photo (region search) -------------------------------------------
  // Pointer events serve mouse, pen and touch alike. A drag smaller than MIN_DRAG pixels is a
  // click, not a box; the server refuses boxes too small to describe and says why.

  const MIN_DRAG = 8;

  function resetBox(src) {
    state.box = null;
    if (!boxEditor) return;
    document.getElementById("box-selection").hidden = true;
    document.getElementById("box-clear").hidden = true;
    boxEditor.hidden = !src;
    if (src) document.getElementById("box-image").src = src;
  }

  if (boxEditor) {
    const stage = document.getElementById("box-stage");
    const selection = document.getElementById("box-selection");
    const clear = document.getElementById("box-clear");
    let drag = null;

    const at = (event) => {
      const r = stage.getBoundingClientRect();
      const clamp = (v) => Math.max(0, Math.min(1, v));
      return [clamp((event.clientX - r.left) / r.width), clamp((event.clientY - r.top) / r.height),
        event.clientX, event.clientY];
    };
    const boxOf = ([ax, ay], [bx, by]) =>
      [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)];

    stage.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      stage.setPointerCapture(event.pointerId);
      drag = { start: at(event), previous: state.box };
    });
    stage.addEventListener("pointermove", (event) => {
      if (!drag) return;
      place(selection, boxOf(drag.start, at(event)));
    });
    const finish = (event) => {
      if (!drag) return;
      const end = at(event);
      const { start, previous } = drag;
      drag = null;
      if (Math.abs(end[2] - start[2]) < MIN_DRAG || Math.abs(end[3] - start[3]) < MIN_DRAG) {
        // A click: keep the box there was (or none).
        if (previous) place(selection, previous);
        else selection.hidden = true;
        return;
      }
      state.box = boxOf(start, end);
      place(selection, state.box);
      clear.hidden = false;
      search();
    };
    stage.addEventListener("pointerup", finish);
    stage.addEventListener("pointercancel", (event) => {
      drag = null;
      if (state.box) place(selection, state.box);
      else selection.hidden = true;
    });
    clear.addEventListener("click", () => {
      state.box = null;
      selection.hidden = true;
      clear.hidden = true;
      search();
    });
  }

  if (state.like) useLike(state.like);
  else if (state.words && !root.dataset.url) search();
  else if (root.dataset.url) {
    // An address in the page's own query string came from a link or a reload: the server
    // fetches only once the person has seen it and pressed the button (a link from another
    // site must not make this server fetch for it).
    const address = root.dataset.url;
    const confirm = document.getElementById("url-confirm");
    urlInput.value = address;
    document.getElementById("url-confirm-address").textContent = address;
    confirm.hidden = false;
    document.getElementById("url-confirm-search").addEventListener("click", () => {
      confirm.hidden = true;
      useUrl(address);
    }, { once: true });
    urlForm.addEventListener("submit", () => { confirm.hidden = true; }, { once: true });
  }
})();
