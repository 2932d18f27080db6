// image-gen's page: a form over POST /generate and a gallery over GET /images.
// Plain JavaScript, no build step. User content (prompts!) only ever goes in as textContent
// or attribute values, never as HTML.
"use strict";

(function () {
  const PAGE_SIZE = 24;
  const FIRST_OPTIONS = ["quality", "style"];

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
  const gallery = $("gallery");
  const galleryEmpty = $("gallery-empty");
  const galleryError = $("gallery-error");
  const galleryStatus = $("gallery-status");
  const loadMore = $("load-more");
  const refresh = $("refresh");

  let models = new Map();
  let nextCursor = null;
  let highlightJob = null;

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

  // Every call answers JSON; failures have the shape {"error", "status": "failed", "code"}.
  async function api(method, path, body) {
    const options = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError("Could not reach the service. Is it running?", "NETWORK_ERROR");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok || !data || data.status === "failed") {
      const message = (data && data.error) || `The service answered HTTP ${response.status}.`;
      const retryAfter =
        (data && data.retry_after) || Number(response.headers.get("Retry-After")) || null;
      throw new ApiError(message, (data && data.code) || `HTTP_${response.status}`, retryAfter);
    }
    return data;
  }

  function showError(box, err) {
    box.replaceChildren();
    const message = err instanceof ApiError ? err.message : "Something went wrong.";
    box.append(el("p", { text: message }));
    if (err instanceof ApiError && err.code) {
      const details = [el("span", { text: "Code: " }), el("code", { text: err.code })];
      if (err.retryAfter) details.push(el("span", { text: ` · retry in ${err.retryAfter} s` }));
      box.append(el("p", { className: "error-code" }, details));
    }
    box.hidden = false;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
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
    generateStatus.textContent = "Generating… image models can take a minute.";
    try {
      const job = await api("POST", "/generate", requestBody());
      const count = job.images.length;
      generateStatus.textContent = `Generated ${count} image${count === 1 ? "" : "s"}.`;
      highlightJob = job.job_id;
      await loadGallery();
    } catch (err) {
      generateStatus.textContent = "";
      showError(generateError, err);
    } finally {
      generateButton.disabled = false;
      form.removeAttribute("aria-busy");
    }
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
      else gallery.replaceChildren(...cards);
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

    const item = el(
      "li",
      {
        className: image.job_id === highlightJob ? "card card-new" : "card",
        "data-image-id": image.id,
        "data-job-id": image.job_id,
      },
      [
        el("a", { className: "thumb", href: image.url, target: "_blank", rel: "noopener" }, [
          el("img", {
            src: image.url,
            alt: prompt,
            loading: "lazy",
            width: image.width,
            height: image.height,
          }),
        ]),
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
          el("div", { className: "card-actions" }, [
            el("a", {
              className: "button small",
              href: image.url,
              target: "_blank",
              rel: "noopener",
              "aria-label": `Open image: ${shorten(prompt)}`,
              text: "Open",
            }),
            el("a", {
              className: "button small",
              href: image.url,
              download: `image-${image.id}.${extension}`,
              "aria-label": `Download image: ${shorten(prompt)}`,
              text: "Download",
            }),
            deleteButton,
          ]),
        ]),
      ]
    );
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

  loadModels();
  loadGallery();
})();
