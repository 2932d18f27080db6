// image-gen's page: a form over POST /generate and a gallery over GET /images.
// Plain JavaScript, no build step. User content (prompts!) only ever goes in as textContent
// or attribute values, never as HTML.
//
// When the service needs client tokens (GET /health says "auth_required"), the page asks for
// one first and sends it as "Authorization: Bearer <token>" on every call. An <img src> or a
// link cannot send that header, so images are then fetched as blobs and shown through object
// URLs; without tokens they keep plain URLs, which the browser caches and loads lazily.
"use strict";

(function () {
  const PAGE_SIZE = 24;
  const THUMB_WIDTH = 256;
  const FIRST_OPTIONS = ["quality", "style"];
  // The token is a secret: sessionStorage keeps it for this tab only and drops it when the tab
  // closes. localStorage would keep it on disk, for anyone who later uses this browser profile.
  const TOKEN_KEY = "image-gen.token";

  const $ = (id) => document.getElementById(id);
  const form = $("generate-form");
  const promptInput = $("prompt");
  const modelSelect = $("model");
  const sizeSelect = $("size");
  const customSizeField = $("custom-size-field");
  const customSizeInput = $("custom-size");
  const countInput = $("count");
  const optionsBox = $("model-options");
  const modelDescription = $("model-description");
  const sizeRule = $("size-rule");
  const generateButton = $("generate-button");
  const generateStatus = $("generate-status");
  const generateError = $("generate-error");
  const jobProgress = $("job-progress");
  const previews = $("previews");
  const gallery = $("gallery");
  const galleryEmpty = $("gallery-empty");
  const galleryError = $("gallery-error");
  const galleryStatus = $("gallery-status");
  const loadMore = $("load-more");
  const refresh = $("refresh");
  const app = $("app");
  const tokenPanel = $("token-panel");
  const tokenForm = $("token-form");
  const tokenInput = $("token");
  const tokenButton = $("token-button");
  const tokenError = $("token-error");
  const session = $("session");
  const usage = $("usage");
  const forgetButton = $("forget-token");

  let models = new Map();
  let nextCursor = null;
  let highlightJob = null;
  let token = storedToken();
  // Object URLs made for a card's or a preview's images, revoked when that element goes.
  const objectUrls = new WeakMap();

  // --- small helpers --------------------------------------------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  function humanize(name) {
    const text = name.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  class ApiError extends Error {
    constructor(message, code, retryAfter) {
      super(message);
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  // A 401: the token form is showing the message, so the other error areas stay quiet.
  class TokenRejected extends ApiError {}

  // Every request goes through here: it adds the token and turns failures into ApiErrors.
  // Failures have the shape {"error", "status": "failed", "code"}; a 401 asks for a token.
  async function request(path, options) {
    const headers = { ...(options && options.headers) };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError("Could not reach the service. Is it running?", "NETWORK_ERROR");
    }
    if (response.ok) return response;
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    const message = (data && data.error) || `The service answered HTTP ${response.status}.`;
    const code = (data && data.code) || `HTTP_${response.status}`;
    const retryAfter =
      (data && data.retry_after) || Number(response.headers.get("Retry-After")) || null;
    if (response.status === 401) {
      const rejected = new TokenRejected(message, code);
      askForToken(rejected);
      throw rejected;
    }
    throw new ApiError(message, code, retryAfter);
  }

  // A JSON call: the parsed answer.
  async function api(method, path, body, extraHeaders) {
    const options = { method, headers: { Accept: "application/json", ...extraHeaders } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await request(path, options);
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!data || data.status === "failed") {
      throw new ApiError((data && data.error) || "The service answered no JSON.", "BAD_ANSWER");
    }
    return data;
  }

  // Readable lead-ins for the errors a token's limits cause; the service's message follows.
  const ERROR_TITLES = {
    PERMISSION_DENIED: "This token may not do that.",
    QUOTA_EXCEEDED: "A cap set by the service's operator is reached.",
    RATE_LIMIT_EXCEEDED: "OpenAI is rate-limiting the service.",
  };

  function showError(box, err) {
    if (err instanceof TokenRejected) return;
    renderError(box, err);
  }

  function renderError(box, err) {
    box.replaceChildren();
    const message = err instanceof ApiError ? err.message : "Something went wrong.";
    const title = err instanceof ApiError && ERROR_TITLES[err.code];
    box.append(el("p", {}, [title ? el("strong", { text: `${title} ` }) : null, message]));
    if (err instanceof ApiError && err.code) {
      const details = [el("span", { text: "Code: " }), el("code", { text: err.code })];
      if (err.retryAfter) {
        details.push(el("span", { text: ` · try again in ${duration(err.retryAfter)}` }));
      }
      box.append(el("p", { className: "error-code" }, details));
    }
    box.hidden = false;
  }

  function duration(seconds) {
    const minutes = Math.round(seconds / 60);
    if (seconds < 90) return `${Math.ceil(seconds)} s`;
    if (minutes < 60) return `about ${minutes} min`;
    return `about ${Math.round(seconds / 3600)} h`;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  // --- the client token ---------------------------------------------------------------------

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (err) {
      return null; // storage is blocked: the token then lasts as long as the page
    }
  }

  function keepToken(value) {
    token = value;
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch (err) {
      // Kept in memory only.
    }
  }

  function forgetToken() {
    token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) {
      // Nothing was stored.
    }
  }

  // Hide everything a token unlocks and ask for one; `err` says why the last one failed.
  function askForToken(err) {
    forgetToken();
    app.hidden = true;
    session.hidden = true;
    usage.textContent = "";
    replaceItems(gallery, []);
    replaceItems(previews, []);
    if (err) renderError(tokenError, err);
    else clearError(tokenError);
    tokenPanel.hidden = false;
    tokenInput.focus();
  }

  async function onTokenSubmit(event) {
    event.preventDefault();
    clearError(tokenError);
    const value = tokenInput.value.trim();
    if (!value) return;
    keepToken(value);
    tokenButton.disabled = true;
    try {
      if (await loadUsage()) {
        tokenInput.value = "";
        openApp();
      }
    } finally {
      tokenButton.disabled = false;
    }
  }

  // Show what the token has used. GET /usage needs a token, so it also checks the token:
  // false when it was refused (the token form is then showing why).
  async function loadUsage() {
    try {
      usage.textContent = usageLine(await api("GET", "/usage"));
      return true;
    } catch (err) {
      usage.textContent = "";
      return !(err instanceof TokenRejected);
    }
  }

  // "alice · 3 images this hour, 7 today · $0.10 today (cap $5.00)"
  function usageLine(data) {
    const mine = data.token;
    if (!mine) {
      const all = data.global || {};
      return `Admin token · ${plural(all.images_last_day, "image")} today from all tokens · ` +
        `${usd(all.usd_last_day)} today`;
    }
    const caps = mine.caps || {};
    const cap = (name, format) => (caps[name] ? ` (cap ${format(caps[name].limit)})` : "");
    return [
      mine.name,
      `${plural(mine.images_last_hour, "image")} this hour${cap("images_per_hour", String)}, ` +
        `${mine.images_last_day} today${cap("images_per_day", String)}`,
      `${usd(mine.usd_last_day)} today${cap("usd_per_day", usd)}`,
    ].join(" · ");
  }

  function plural(count, noun) {
    return `${count || 0} ${noun}${count === 1 ? "" : "s"}`;
  }

  function usd(amount) {
    return `$${Number(amount || 0).toFixed(2)}`;
  }

  function openApp() {
    tokenPanel.hidden = true;
    clearError(tokenError);
    session.hidden = !token;
    app.hidden = false;
    loadModels();
    loadGallery();
  }

  // /health answers without a token and says whether calls need one. If it cannot be read,
  // carry on: a 401 from any call brings up the token form anyway.
  async function start() {
    let health = null;
    try {
      const response = await fetch("/health", { headers: { Accept: "application/json" } });
      health = await response.json(); // an unhealthy service (503) still says it
    } catch (err) {
      health = null;
    }
    if (health && health.auth_required === false) forgetToken();
    if (health && health.auth_required && !token) {
      askForToken(null);
      return;
    }
    if (token && !(await loadUsage())) return;
    openApp();
  }

  // --- the form: only the options the chosen model takes ----------------------------------

  async function loadModels() {
    try {
      const data = await api("GET", "/models");
      const usable = data.models.filter((model) => model.status !== "shut_down");
      models = new Map(usable.map((model) => [model.id, model]));
      modelSelect.replaceChildren(
        ...usable.map((model) => el("option", { value: model.id, text: modelLabel(model) }))
      );
      const preferred = document.body.dataset.defaultModel || data.default_model;
      if (models.has(preferred)) modelSelect.value = preferred;
      modelSelect.disabled = false;
      generateButton.disabled = false;
      renderModelFields();
    } catch (err) {
      modelSelect.replaceChildren(el("option", { text: "Models unavailable" }));
      showError(generateError, err);
    }
  }

  function modelLabel(model) {
    if (model.status === "deprecated") return `${model.id} (shuts down ${model.shutdown_on})`;
    if (model.status === "legacy") return `${model.id} (legacy)`;
    return model.id;
  }

  function renderModelFields() {
    const model = models.get(modelSelect.value);
    if (!model) return;
    modelDescription.textContent = model.description;
    promptInput.maxLength = model.max_prompt_chars;

    const previousSize = sizeSelect.value;
    sizeSelect.replaceChildren(
      ...model.sizes.map((size) =>
        el("option", { value: size, text: size === "auto" ? "auto (model chooses)" : size })
      )
    );
    if (model.size_rule) sizeSelect.append(el("option", { value: "custom", text: "Custom…" }));
    sizeSelect.value = model.sizes.includes(previousSize) ? previousSize : model.default_size;
    sizeRule.textContent = model.size_rule
      ? `Custom sizes: edges multiples of ${model.size_rule.multiple_of}, longest edge at most ` +
        `${model.size_rule.max_edge}, aspect ratio at most ${model.size_rule.max_aspect_ratio}:1.`
      : "";
    toggleCustomSize();

    countInput.max = String(model.count.max);
    if (Number(countInput.value) > model.count.max) countInput.value = String(model.count.max);

    const names = Object.keys(model.options).sort(
      (a, b) => rank(a) - rank(b) || a.localeCompare(b)
    );
    optionsBox.replaceChildren(...names.map((name) => optionField(name, model.options[name])));
    optionsBox.hidden = names.length === 0;
  }

  function rank(name) {
    const index = FIRST_OPTIONS.indexOf(name);
    return index === -1 ? FIRST_OPTIONS.length : index;
  }

  function optionField(name, spec) {
    const id = `option-${name}`;
    let control;
    if (spec.enum) {
      const fallback = spec.default ? `Default (${spec.default})` : "Default";
      control = el("select", { id, name, "data-option": name }, [
        el("option", { value: "", text: fallback }),
        ...spec.enum.map((value) => el("option", { value, text: value })),
      ]);
    } else {
      control = el("input", {
        id,
        name,
        "data-option": name,
        "data-integer": true,
        type: "number",
        inputmode: "numeric",
        min: spec.minimum,
        max: spec.maximum,
        placeholder: `${spec.minimum}–${spec.maximum}, default`,
      });
    }
    return el("div", { className: "field" }, [
      el("label", { for: id, text: humanize(name) }),
      control,
    ]);
  }

  function toggleCustomSize() {
    const custom = sizeSelect.value === "custom";
    customSizeField.hidden = !custom;
    customSizeInput.required = custom;
    sizeRule.hidden = !custom;
  }

  function requestBody() {
    const body = {
      prompt: promptInput.value,
      model: modelSelect.value,
      count: Number(countInput.value),
    };
    body.size = sizeSelect.value === "custom" ? customSizeInput.value.trim() : sizeSelect.value;
    for (const control of optionsBox.querySelectorAll("[data-option]")) {
      if (control.value === "") continue;
      body[control.dataset.option] =
        "integer" in control.dataset ? Number(control.value) : control.value;
    }
    return body;
  }

  async function onGenerate(event) {
    event.preventDefault();
    clearError(generateError);
    if (!promptInput.value.trim()) {
      showError(generateError, new ApiError("Write a prompt first.", "VALIDATION_ERROR"));
      promptInput.focus();
      return;
    }
    generateButton.disabled = true;
    form.setAttribute("aria-busy", "true");
    generateStatus.textContent = "Submitting…";
    try {
      const accepted = await api("POST", "/generate", requestBody(), {
        Prefer: "respond-async",
      });
      const job = await followJob(accepted);
      const count = job.images.length;
      generateStatus.textContent = `Generated ${count} image${count === 1 ? "" : "s"}.`;
      highlightJob = job.job_id;
      await loadGallery();
    } catch (err) {
      generateStatus.textContent = "";
      showError(generateError, err);
    } finally {
      if (token) loadUsage();
      generateButton.disabled = false;
      form.removeAttribute("aria-busy");
      jobProgress.hidden = true;
      replaceItems(previews, []);
    }
  }

  // --- an asynchronous job: its events (Server-Sent Events over fetch), or polling ---------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The finished job, or an ApiError if it failed. Events first; polling if they break off.
  async function followJob(job) {
    if (job.status === "completed") return job;
    showJob(job);
    try {
      return await streamJob(job.job_id);
    } catch (err) {
      if (err instanceof ApiError && err.code !== "STREAM_ENDED") throw err;
      return pollJob(job.job_id);
    }
  }

  async function streamJob(jobId) {
    let response;
    try {
      response = await request(`/jobs/${jobId}/events`, {
        headers: { Accept: "text/event-stream" },
      });
    } catch (err) {
      if (err instanceof TokenRejected) throw err;
      throw new ApiError("No event stream.", "STREAM_ENDED");
    }
    if (!response.body) throw new ApiError("No event stream.", "STREAM_ENDED");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        throw new ApiError("The event stream broke off.", "STREAM_ENDED");
      }
      if (chunk.done) throw new ApiError("The event stream ended early.", "STREAM_ENDED");
      buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const fields = {};
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon <= 0) continue;
          fields[line.slice(0, colon)] = line.slice(colon + 1).replace(/^ /, "");
        }
        if (!fields.data) continue;
        const data = JSON.parse(fields.data);
        if (fields.event === "completed") return data;
        if (fields.event === "failed") throw new ApiError(data.error, data.code, data.retry_after);
        onJobEvent(fields.event, data);
      }
    }
  }

  async function pollJob(jobId) {
    const giveUp = Date.now() + 15 * 60 * 1000;
    while (Date.now() < giveUp) {
      const job = await api("GET", `/jobs/${jobId}`);
      if (job.status === "completed") return job;
      showJob(job);
      await sleep(2000);
    }
    throw new ApiError("The job is still not finished; look for it in the gallery later.", "TIMEOUT");
  }

  function showJob(job) {
    onJobEvent("status", job);
    for (const preview of job.previews || []) onJobEvent("partial_image", preview);
  }

  function onJobEvent(name, data) {
    if (name === "status") {
      const { images_done: done, count } = data.progress || {};
      generateStatus.textContent =
        data.status === "queued"
          ? "Queued: waiting for a free slot…"
          : `Generating… ${done || 0} of ${count || "?"} image${count === 1 ? "" : "s"} done. ` +
            "Image models can take a minute or two.";
    } else if ((name === "partial_image" || name === "image") && data.url) {
      const id = `preview-${data.image}`;
      const alt = `Preview of image ${data.image + 1}`;
      const final = data.partial_image_index === null || data.partial_image_index === undefined;
      const existing = document.getElementById(id);
      if (existing && existing.dataset.url === data.url) return; // polling repeats previews
      const image = el("img", { alt });
      const item = el("li", { id, className: final ? "final" : "partial", "data-url": data.url }, [
        image,
      ]);
      if (existing) {
        release(existing);
        existing.replaceWith(item);
      } else {
        previews.append(item);
      }
      showImage(image, data.url, item);
      jobProgress.hidden = false;
    }
  }

  // --- images: plain URLs, or blobs fetched with the token --------------------------------

  // Show the image at `url` in `img`; `owner` is the element whose removal revokes its blob.
  async function showImage(img, url, owner) {
    if (!token) {
      img.src = url;
      return;
    }
    try {
      const src = await blobUrl(url, owner);
      if (src) img.src = src;
    } catch (err) {
      // The alt text stands in for it; a 401 has already brought up the token form.
    }
  }

  // An object URL for the image at `url`, fetched with the token; `owner` keeps it.
  async function blobUrl(url, owner) {
    const response = await request(url, { headers: { Accept: "image/*" } });
    const blob = await response.blob();
    if (!owner.isConnected) return null; // it left the page while the image was on its way
    const src = URL.createObjectURL(blob);
    if (!objectUrls.has(owner)) objectUrls.set(owner, []);
    objectUrls.get(owner).push(src);
    return src;
  }

  // Let the browser free the blobs behind an element's object URLs.
  function release(owner) {
    for (const src of objectUrls.get(owner) || []) URL.revokeObjectURL(src);
    objectUrls.delete(owner);
  }

  function replaceItems(list, items) {
    for (const item of list.children) release(item);
    list.replaceChildren(...items);
  }

  // --- the gallery --------------------------------------------------------------------------

  async function loadGallery(cursor) {
    clearError(galleryError);
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) params.set("cursor", cursor);
    gallery.setAttribute("aria-busy", "true");
    try {
      const page = await api("GET", `/images?${params}`);
      const cards = page.images.map(card);
      if (cursor) gallery.append(...cards);
      else replaceItems(gallery, cards);
      nextCursor = page.next_cursor;
      loadMore.hidden = !nextCursor;
      updateEmpty();
    } catch (err) {
      showError(galleryError, err);
    } finally {
      gallery.removeAttribute("aria-busy");
    }
  }

  function updateEmpty() {
    galleryEmpty.hidden = gallery.children.length > 0;
  }

  function card(image) {
    const prompt = image.prompt || "";
    const extension = { jpeg: "jpg" }[image.format] || image.format || "png";
    const created = image.created_at ? new Date(image.created_at) : null;
    const meta = [image.model, image.size, image.format].filter(Boolean).join(" · ");

    const deleteButton = el("button", {
      type: "button",
      className: "button small danger",
      "aria-label": `Delete image: ${shorten(prompt)}`,
      text: "Delete",
    });
    deleteButton.addEventListener("click", () => onDelete(image, item, deleteButton));

    const thumbnail = el("img", {
      alt: prompt,
      loading: "lazy",
      width: image.width,
      height: image.height,
    });
    const openLink = el("a", {
      className: "button small",
      href: image.url,
      target: "_blank",
      rel: "noopener",
      "aria-label": `Open image: ${shorten(prompt)}`,
      text: "Open",
    });
    const downloadLink = el("a", {
      className: "button small",
      href: image.url,
      download: `image-${image.id}.${extension}`,
      "aria-label": `Download image: ${shorten(prompt)}`,
      text: "Download",
    });
    const thumbLink = el(
      "a",
      { className: "thumb", href: image.url, target: "_blank", rel: "noopener" },
      [thumbnail]
    );

    // With a token, links cannot carry it: fetch the full image once, open or save its blob.
    let full = null;
    async function fullImage() {
      full = full || (await blobUrl(image.url, item));
      return full;
    }
    async function onOpen(event) {
      if (!token) return; // a plain link does it
      event.preventDefault();
      // Open the tab during the click, which allows it, and point it at the image once here.
      const tab = window.open("", "_blank");
      if (tab) tab.opener = null;
      try {
        const src = await fullImage();
        if (tab) tab.location.href = src;
        else window.open(src, "_blank", "noopener");
      } catch (err) {
        if (tab) tab.close();
        showError(galleryError, err);
      }
    }
    async function onDownload(event) {
      if (!token) return;
      event.preventDefault();
      try {
        const src = await fullImage();
        el("a", { href: src, download: downloadLink.getAttribute("download") }).click();
      } catch (err) {
        showError(galleryError, err);
      }
    }
    openLink.addEventListener("click", onOpen);
    thumbLink.addEventListener("click", onOpen);
    downloadLink.addEventListener("click", onDownload);

    const item = el(
      "li",
      {
        className: image.job_id === highlightJob ? "card card-new" : "card",
        "data-image-id": image.id,
        "data-job-id": image.job_id,
      },
      [
        thumbLink,
        el("div", { className: "card-body" }, [
          el("p", { className: "prompt", title: prompt, text: prompt }),
          image.revised_prompt && image.revised_prompt !== prompt
            ? el("p", { className: "revised", title: image.revised_prompt, text: `Revised: ${image.revised_prompt}` })
            : null,
          el("p", { className: "meta" }, [
            el("span", { text: meta }),
            image.placeholder ? el("span", { className: "badge", text: "placeholder" }) : null,
          ]),
          created
            ? el("time", {
                className: "meta",
                datetime: image.created_at,
                text: created.toLocaleString(),
              })
            : null,
          el("div", { className: "card-actions" }, [openLink, downloadLink, deleteButton]),
        ]),
      ]
    );
    // The caller puts the card in the page before this blob can arrive (it is async).
    showImage(thumbnail, `${image.url}?width=${THUMB_WIDTH}`, item);
    return item;
  }

  function shorten(text) {
    return text.length > 60 ? `${text.slice(0, 57)}…` : text;
  }

  async function onDelete(image, item, button) {
    if (!window.confirm(`Delete this image?\n\n${shorten(image.prompt || "")}`)) return;
    clearError(galleryError);
    button.disabled = true;
    try {
      await api("DELETE", image.url);
      galleryStatus.textContent = "Image deleted.";
    } catch (err) {
      if (err.code !== "IMAGE_NOT_FOUND") {
        button.disabled = false;
        showError(galleryError, err);
        return;
      }
      galleryStatus.textContent = "That image was already gone.";
    }
    const next = item.nextElementSibling || item.previousElementSibling;
    release(item);
    item.remove();
    updateEmpty();
    const focusTarget = next && next.querySelector("button.danger");
    (focusTarget || $("gallery-heading")).focus();
  }

  // --- wiring ---------------------------------------------------------------------------

  modelSelect.addEventListener("change", renderModelFields);
  sizeSelect.addEventListener("change", toggleCustomSize);
  form.addEventListener("submit", onGenerate);
  refresh.addEventListener("click", () => {
    highlightJob = null;
    loadGallery();
  });
  loadMore.addEventListener("click", () => loadGallery(nextCursor));
  tokenForm.addEventListener("submit", onTokenSubmit);
  forgetButton.addEventListener("click", () => askForToken(null));

  start();
})();
