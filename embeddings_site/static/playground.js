// The playground: builds one /v1/embeddings request, sends it with the user's key, shows the
// response, its usage and cost, a cosine-similarity heatmap and code that repeats the request.
(function () {
  "use strict";
  const KEY_STORAGE = "embeddings.playground.key";
  const $ = (selector) => document.querySelector(selector);
  const form = $("#playground-form");
  const models = JSON.parse($("#models-data").textContent);
  const origin = window.location.origin;
  const csrf = () => form.querySelector("input[name=csrfmiddlewaretoken]").value;

  // --- key ---------------------------------------------------------------------------------
  const keyInput = $("#pg-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => localStorage.setItem(KEY_STORAGE, keyInput.value.trim()));
  $("#pg-show-key").addEventListener("change", (event) => { keyInput.type = event.target.checked ? "text" : "password"; });
  $("#pg-get-key").addEventListener("click", async () => {
    const response = await fetch(form.dataset.keyUrl, { method: "POST", headers: { "X-CSRFToken": csrf() }, credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("#pg-key-note").textContent = body.error?.message || body.detail || `HTTP ${response.status}`; return; }
    keyInput.value = body.key;
    localStorage.setItem(KEY_STORAGE, body.key);
    $("#pg-key-note").textContent = `Key ${body.prefix}… with ${body.balance.toLocaleString()} tokens, saved in this browser. It is shown only here, once.`;
  });

  // --- model and options -------------------------------------------------------------------
  const modelSelect = $("#pg-model");
  for (const model of models) modelSelect.add(new Option(`${model.name} (${model.dimensions}-d)`, model.name));
  const currentModel = () => models.find((model) => model.name === modelSelect.value) || models[0];
  function modelChanged() {
    const model = currentModel();
    const task = $("#pg-task");
    task.length = 1;
    for (const name of model?.tasks || []) task.add(new Option(name, name));
    const images = (model?.modalities || []).includes("image");
    $("#pg-add-image-url").hidden = !images;
    $("#pg-add-image-file-label").hidden = !images;
    $("#pg-dimensions").max = model?.dimensions || "";
    render();
  }
  modelSelect.addEventListener("change", modelChanged);

  // --- inputs ------------------------------------------------------------------------------
  let inputs = [
    { kind: "text", value: "The quick brown fox jumps over the lazy dog." },
    { kind: "text", value: "A fast auburn fox leaps over a sleepy hound." },
    { kind: "text", value: "Quarterly revenue grew by twelve percent." },
  ];
  const list = $("#pg-inputs");
  function renderInputs() {
    list.replaceChildren(...inputs.map((item, index) => {
      const li = document.createElement("li");
      li.className = "input-item";
      let field;
      if (item.kind === "text") {
        field = document.createElement("textarea");
        field.rows = 2;
        field.value = item.value;
        field.setAttribute("aria-label", `Input ${index + 1}`);
        field.addEventListener("input", () => { item.value = field.value; render(); });
      } else if (item.kind === "image-url") {
        field = document.createElement("input");
        field.type = "url";
        field.placeholder = "https://…/image.png";
        field.value = item.value;
        field.addEventListener("input", () => { item.value = field.value; render(); });
      } else {
        field = document.createElement("img");
        field.src = item.value;
        field.alt = item.name || "uploaded image";
        field.className = "thumb";
      }
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary";
      remove.textContent = "×";
      remove.title = "Remove";
      remove.addEventListener("click", () => { inputs.splice(index, 1); renderInputs(); render(); });
      li.append(field, remove);
      return li;
    }));
  }
  $("#pg-add-text").addEventListener("click", () => { inputs.push({ kind: "text", value: "" }); renderInputs(); render(); });
  $("#pg-add-image-url").addEventListener("click", () => { inputs.push({ kind: "image-url", value: "" }); renderInputs(); render(); });
  $("#pg-add-image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => { inputs.push({ kind: "image-file", value: reader.result, name: file.name }); renderInputs(); render(); };
    reader.readAsDataURL(file);
    event.target.value = "";
  });

  // --- the request -------------------------------------------------------------------------
  function requestBody() {
    const body = { model: modelSelect.value };
    body.input = inputs.map((item) => (item.kind === "text" ? item.value : { image: item.value }));
    const task = $("#pg-task").value;
    if (task) body.task = task;
    const dimensions = parseInt($("#pg-dimensions").value, 10);
    if (dimensions > 0) body.dimensions = dimensions;
    body.normalized = $("#pg-normalized").checked;
    body.embedding_type = $("#pg-type").value;
    if ($("#pg-truncate").checked) body.truncate = true;
    if ($("#pg-late-chunking").checked) body.late_chunking = true;
    return body;
  }

  function python(value, indent = 0) {
    const pad = "    ".repeat(indent + 1), end = "    ".repeat(indent);
    if (value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "string") return JSON.stringify(value);
    if (typeof value === "number") return String(value);
    if (Array.isArray(value)) {
      if (!value.length) return "[]";
      return "[\n" + value.map((item) => pad + python(item, indent + 1)).join(",\n") + ",\n" + end + "]";
    }
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return "{\n" + entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${python(v, indent + 1)}`).join(",\n") + ",\n" + end + "}";
  }

  function snippets(body) {
    const json = JSON.stringify(body, null, 2);
    const curl = `curl ${origin}/v1/embeddings \\\n  -H "Content-Type: application/json" \\\n` +
      `  -H "Authorization: Bearer $EMBEDDINGS_API_KEY" \\\n  -d @- <<'JSON'\n${json}\nJSON\n`;
    const extra = {};
    for (const name of ["task", "normalized", "truncate", "late_chunking"]) if (name in body) extra[name] = body[name];
    const args = [`    model=${python(body.model, 1)},`, `    input=${python(body.input, 1)},`,
      `    encoding_format=${python(body.embedding_type, 1)},`];
    if ("dimensions" in body) args.push(`    dimensions=${body.dimensions},`);
    if (Object.keys(extra).length) args.push(`    extra_body=${python(extra, 1)},`);
    const openai = `import os\n\nfrom openai import OpenAI\n\n` +
      `client = OpenAI(api_key=os.environ["EMBEDDINGS_API_KEY"], base_url="${origin}/v1")\n` +
      `response = client.embeddings.create(\n${args.join("\n")}\n)\nprint(response.model_dump_json(indent=2))\n`;
    const requests = `import json\nimport os\n\nimport requests\n\nresponse = requests.post(\n` +
      `    "${origin}/v1/embeddings",\n` +
      `    headers={"Authorization": f"Bearer {os.environ['EMBEDDINGS_API_KEY']}"},\n` +
      `    json=${python(body, 1)},\n    timeout=60,\n)\nprint(json.dumps(response.json(), indent=2))\n`;
    return { curl, openai, requests };
  }

  function render() {
    const code = snippets(requestBody());
    for (const name of Object.keys(code)) $(`#snippet-${name}`).textContent = code[name];
  }
  for (const id of ["#pg-task", "#pg-dimensions", "#pg-type", "#pg-normalized", "#pg-truncate", "#pg-late-chunking"]) {
    $(id).addEventListener("change", render);
    $(id).addEventListener("input", render);
  }

  // --- vectors and the heatmap -------------------------------------------------------------
  function vectorOf(embedding, type) {
    if (Array.isArray(embedding) && type === "float") return embedding;
    if (typeof embedding === "string") {
      const bytes = Uint8Array.from(atob(embedding), (c) => c.charCodeAt(0));
      return Array.from(new Float32Array(bytes.buffer));
    }
    if (Array.isArray(embedding)) {  // binary (int8) / ubinary (uint8): packed sign bits
      const bits = [];
      for (const raw of embedding) {
        const byte = type === "binary" ? raw + 128 : raw;
        for (let bit = 7; bit >= 0; bit--) bits.push((byte >> bit) & 1 ? 1 : -1);
      }
      return bits;
    }
    return null;
  }
  function cosine(a, b) {
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
    return na && nb ? dot / Math.sqrt(na * nb) : 0;
  }
  function label(index) {
    const item = inputs[index];
    if (!item) return `#${index + 1}`;
    const text = item.kind === "text" ? item.value : (item.name || item.value);
    return `${index + 1}. ${text.length > 24 ? text.slice(0, 23) + "…" : text}`;
  }
  function heatmap(vectors) {
    const table = document.createElement("table");
    table.id = "pg-heatmap-table";
    const head = table.createTHead().insertRow();
    head.append(document.createElement("th"));
    vectors.forEach((_, j) => { const th = document.createElement("th"); th.textContent = String(j + 1); th.title = label(j); head.append(th); });
    const tbody = table.createTBody();
    vectors.forEach((a, i) => {
      const row = tbody.insertRow();
      const th = document.createElement("th");
      th.textContent = label(i);
      row.append(th);
      vectors.forEach((b, j) => {
        const value = cosine(a, b);
        const cell = row.insertCell();
        cell.textContent = value.toFixed(3);
        cell.dataset.i = i; cell.dataset.j = j; cell.dataset.value = value;
        const heat = Math.max(0, Math.min(1, (value + 1) / 2));
        cell.style.background = `hsl(212, 80%, ${96 - 58 * heat}%)`;
        cell.style.color = heat > 0.7 ? "#fff" : "#1c2430";
      });
    });
    $("#pg-heatmap").replaceChildren(table);
  }

  // --- run ---------------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    localStorage.setItem(KEY_STORAGE, key);
    const body = requestBody();
    render();
    $("#pg-run").disabled = true;
    $("#pg-status").textContent = "Embedding…";
    $("#pg-error").hidden = true;
    try {
      const response = await fetch(`${origin}/v1/embeddings`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      let data;
      try { data = JSON.parse(text); } catch { data = { detail: text }; }
      $("#pg-response").textContent = JSON.stringify(data, null, 2);
      if (!response.ok) {
        $("#pg-error").hidden = false;
        $("#pg-error").textContent = `${response.status} ${data.code || ""}: ${data.detail || data.error?.message || text}`;
        $("#pg-status").textContent = "";
        return;
      }
      const usage = data.usage || {};
      const model = currentModel();
      const cost = (usage.total_tokens || 0) * (model?.price || 0) / 1e6;
      $("#pg-usage").innerHTML = "";
      $("#pg-usage").append(
        Object.assign(document.createElement("strong"), { id: "pg-total-tokens", textContent: `${usage.total_tokens} tokens` }),
        ` charged · ${usage.prompt_tokens ?? usage.total_tokens} prompt` +
        (usage.image_tokens ? ` · ${usage.image_tokens} image` : "") +
        ` · about $${cost.toFixed(6)} at $${model?.price ?? 0} per 1M tokens`);
      $("#pg-usage").dataset.totalTokens = usage.total_tokens;
      const type = body.embedding_type;
      const vectors = data.data.map((item) => vectorOf(item.embedding, type));
      if (vectors.every(Boolean)) heatmap(vectors);
      $("#pg-status").textContent = `Done · request ${response.headers.get("X-Request-ID") || ""}`;
    } catch (error) {
      $("#pg-error").hidden = false;
      $("#pg-error").textContent = String(error);
      $("#pg-status").textContent = "";
    } finally {
      $("#pg-run").disabled = false;
    }
  });

  // --- snippet tabs and copy buttons -------------------------------------------------------
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
    document.querySelectorAll(".snippet").forEach((box) => { box.hidden = box.dataset.snippet !== tab.dataset.tab; });
    document.querySelectorAll(".tab").forEach((other) => other.classList.toggle("active", other === tab));
  }));
  document.querySelectorAll("[data-copy]").forEach((button) => button.addEventListener("click", async () => {
    const text = $(button.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
    catch { button.textContent = "Select and copy"; }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }));

  renderInputs();
  modelChanged();
})();
