// The playground: three tabs, one per operation, on one key. Embed builds a /v1/embeddings
// request and shows a cosine-similarity heatmap; Rerank sends a query and documents to
// /v1/rerank and shows them ranked with their scores; Classify sends inputs and labels to
// /v1/classify and shows each input's labels with scores, the prediction highlighted. Every tab
// shows the response, its usage and cost, and code that repeats the request.
// (No inline handlers or style attributes: the page's CSP refuses them. Bars and heat are set
// through element.style, which it allows.)
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
  const keyNote = $("#pg-key-note");
  const signedIn = form.dataset.signedIn === "1";
  function noteLink(text, href) { return Object.assign(document.createElement("a"), { href, textContent: text }); }
  async function requestKey(confirmed) {
    const response = await fetch(form.dataset.keyUrl, {
      method: "POST", headers: { "X-CSRFToken": csrf() }, credentials: "same-origin",
      body: new URLSearchParams(confirmed ? { confirm: "1" } : {}),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { keyNote.textContent = body.error?.message || body.detail || `HTTP ${response.status}`; return; }
    keyInput.value = body.key;
    localStorage.setItem(KEY_STORAGE, body.key);
    const saved = `Key ${body.name ? `"${body.name}" ` : ""}${body.prefix}… is saved in this browser; it is shown only here, once. `;
    keyNote.classList.toggle("warn", body.balance <= 0);
    // A key with no tokens is not handed over silently: say why a request would be refused.
    keyNote.textContent = body.balance > 0 ? `${saved}It has ${body.balance.toLocaleString()} tokens.` : `${saved}${body.message || "It has 0 tokens."} `;
    if (body.balance <= 0) {
      if (body.move_url) keyNote.append(noteLink("Move tokens", body.move_url), " · ");
      if (body.top_up_url) keyNote.append(noteLink("Top up", body.top_up_url));
    }
  }
  $("#pg-get-key").addEventListener("click", () => {
    if (!signedIn) { requestKey(false); return; }
    // Signed in: a key's secret is shown once and never stored, so an existing key cannot be
    // filled in. Paste one, or create a new key only on an explicit confirm.
    keyNote.classList.remove("warn");
    keyNote.textContent = "Paste one of your keys above (its secret was shown once, when you created it), or ";
    const create = Object.assign(document.createElement("button"), { type: "button", id: "pg-confirm-key", className: "secondary", textContent: "create a new key" });
    create.addEventListener("click", () => { create.disabled = true; requestKey(true); });
    keyNote.append(create, " for this browser.");
  });

  // --- model and options -------------------------------------------------------------------
  const serving = (operation) => models.filter((model) => (model.operations || ["embeddings"]).includes(operation));
  const modelSelect = $("#pg-model");
  for (const model of serving("embeddings")) modelSelect.add(new Option(`${model.name} (${model.dimensions}-d)`, model.name));
  const currentModel = () => models.find((model) => model.name === modelSelect.value) || serving("embeddings")[0];
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

  // --- operations: one tab each, the models that serve it ----------------------------------
  const OPERATIONS = {
    embed: { serves: "embeddings", path: "/v1/embeddings", run: "Embed", busy: "Embedding…", snippets: ["curl", "openai", "requests", "fetch"] },
    rerank: { serves: "rerank", path: "/v1/rerank", run: "Rerank", busy: "Reranking…", snippets: ["curl", "requests", "fetch", "cohere"] },
    classify: { serves: "classify", path: "/v1/classify", run: "Classify", busy: "Classifying…", snippets: ["curl", "requests", "fetch"] },
  };
  const operationModels = { embed: modelSelect, rerank: $("#pg-rerank-model"), classify: $("#pg-classify-model") };
  for (const name of ["rerank", "classify"]) {
    for (const model of serving(OPERATIONS[name].serves)) operationModels[name].add(new Option(model.name, model.name));
    operationModels[name].addEventListener("change", render);
  }
  let operation = "embed";
  // What each tab showed last, so that switching back finds its result again.
  const shown = { embed: null, rerank: null, classify: null };
  function showOperation(name) {
    operation = OPERATIONS[name] ? name : "embed";
    form.dataset.operation = operation;
    document.querySelectorAll(".op-tab").forEach((tab) => {
      const active = tab.dataset.operation === operation;
      tab.classList.toggle("active", active);
      tab.setAttribute("aria-selected", active ? "true" : "false");
    });
    document.querySelectorAll("[data-pane]").forEach((pane) => { pane.hidden = pane.dataset.pane !== operation; });
    const none = !operationModels[operation].length;
    $("#pg-no-model").hidden = !none;
    $("#pg-run").disabled = none;
    $("#pg-run").textContent = OPERATIONS[operation].run;
    // Each operation's SDK: openai's embeds, Cohere's (v2) reranks; classify has none.
    const offered = OPERATIONS[operation].snippets;
    document.querySelectorAll(".tab").forEach((tab) => { tab.hidden = !offered.includes(tab.dataset.tab); });
    const current = document.querySelector(".tab.active");
    if (current && !offered.includes(current.dataset.tab)) showSnippet("curl");
    showResult(shown[operation]);
    render();
  }
  document.querySelectorAll(".op-tab").forEach((tab) => tab.addEventListener("click", () => {
    showOperation(tab.dataset.operation);
    history.replaceState(null, "", tab.dataset.operation === "embed" ? window.location.pathname : `#${tab.dataset.operation}`);
  }));

  // --- inputs ------------------------------------------------------------------------------
  // Example sets, like Jina's playground: each shows something in the heatmap. The translations
  // find each other only on a multilingual model; the note says so rather than promise it.
  const EXAMPLES = {
    paraphrases: {
      note: "Two paraphrases score high together; the unrelated sentence stays near 0.",
      texts: [
        "The quick brown fox jumps over the lazy dog.",
        "A fast auburn fox leaps over a sleepy hound.",
        "Quarterly revenue grew by twelve percent.",
      ],
    },
    multilingual: {
      note: "English, German, Chinese, Japanese and Spanish translations of one sentence, then an unrelated one. " +
        "A multilingual model scores the translations high together; an English-only model (the embedded " +
        "default all-MiniLM-L6-v2 is one) finds them much less alike.",
      texts: [
        "The weather is lovely today, so we are going for a walk in the park.",
        "Das Wetter ist heute herrlich, also gehen wir im Park spazieren.",
        "今天天气很好，所以我们去公园散步。",
        "今日は天気がとても良いので、公園を散歩します。",
        "Hoy hace un tiempo precioso, así que vamos a pasear por el parque.",
        "The invoice must be paid within thirty days.",
      ],
    },
    questions: {
      note: "Each question scores highest with the passage that answers it.",
      texts: [
        "How many moons does Mars have?",
        "Mars has two small moons, Phobos and Deimos.",
        "What is the boiling point of water at sea level?",
        "At sea level, water boils at 100 degrees Celsius.",
      ],
    },
    code: {
      note: "A question and three snippets in different languages: a code-trained model ranks the Python one first.",
      texts: [
        "How do I reverse a list in Python?",
        "reversed_items = items[::-1]",
        "const total = prices.reduce((sum, price) => sum + price, 0);",
        "SELECT name FROM users WHERE active = 1;",
      ],
    },
  };
  const examples = $("#pg-examples");
  const exampleInputs = (name) => EXAMPLES[name].texts.map((value) => ({ kind: "text", value }));
  let inputs = exampleInputs("paraphrases");
  examples.value = "paraphrases";
  function exampleChosen() {
    const chosen = EXAMPLES[examples.value] || EXAMPLES.paraphrases;
    $("#pg-examples-note").textContent = `Examples only: choosing one replaces the inputs below. ${chosen.note}`;
  }
  examples.addEventListener("change", () => {
    inputs = exampleInputs(examples.value);
    exampleChosen();
    renderInputs();
    render();
  });
  exampleChosen();
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

  // Rerank's and Classify's examples fill their text boxes; the defaults are the English ones.
  const ENGLISH_ONLY = "An English-only model (the embedded default all-MiniLM-L6-v2 is one) does poorly on the other languages: " +
    "try a multilingual model.";
  const FIELD_EXAMPLES = {
    rerank: {
      english: {
        note: "Examples only: choosing one replaces the query and documents.",
        fields: {
          "#pg-rerank-query": "Which animal is a fast runner?",
          "#pg-rerank-documents": "Quarterly revenue grew by twelve percent.\n" +
            "The cheetah is the fastest land animal, reaching 100 km/h.\nParis is the capital of France.",
        },
      },
      multilingual: {
        note: `Examples only: choosing one replaces the query and documents. The two cheetah passages answer it. ${ENGLISH_ONLY}`,
        fields: {
          "#pg-rerank-query": "Which animal is a fast runner?",
          "#pg-rerank-documents": "El guepardo es el animal terrestre más rápido: alcanza los 100 km/h.\n" +
            "Der Umsatz stieg im Quartal um zwölf Prozent.\nパリはフランスの首都です。\n猎豹是陆地上跑得最快的动物。",
        },
      },
    },
    classify: {
      english: {
        note: "Examples only: choosing one replaces the inputs and labels.",
        fields: {
          "#pg-classify-inputs": "The striker scored twice in the final minutes.\nThe central bank raised interest rates again.",
          "#pg-classify-labels": "Sports\nFinance",
        },
      },
      multilingual: {
        note: `Examples only: choosing one replaces the inputs and labels. ${ENGLISH_ONLY}`,
        fields: {
          "#pg-classify-inputs": "Der Stürmer traf in den letzten Minuten zweimal.\n" +
            "El banco central volvió a subir los tipos de interés.\n选手在决赛中打破了世界纪录。",
          "#pg-classify-labels": "Sports\nFinance",
        },
      },
    },
  };
  document.querySelectorAll("select[data-examples]").forEach((select) => {
    const sets = FIELD_EXAMPLES[select.dataset.examples];
    const note = $(`#${select.id}-note`);
    note.textContent = sets[select.value].note;
    select.addEventListener("change", () => {
      const chosen = sets[select.value];
      for (const [selector, text] of Object.entries(chosen.fields)) $(selector).value = text;
      note.textContent = chosen.note;
      render();
    });
  });

  // --- the request -------------------------------------------------------------------------
  const lines = (selector) => $(selector).value.split("\n").map((line) => line.trim()).filter(Boolean);
  function rerankBody() {
    const body = { model: operationModels.rerank.value, query: $("#pg-rerank-query").value, documents: lines("#pg-rerank-documents") };
    const topN = parseInt($("#pg-rerank-top-n").value, 10);
    if (topN > 0) body.top_n = topN;
    body.return_documents = $("#pg-rerank-return-documents").checked;
    return body;
  }
  function classifyBody() {
    const classifier = $("#pg-classifier-id").value.trim();
    if (classifier) return { classifier_id: classifier, input: lines("#pg-classify-inputs") };
    return { model: operationModels.classify.value, input: lines("#pg-classify-inputs"), labels: lines("#pg-classify-labels") };
  }
  function requestBody() {
    if (operation === "rerank") return rerankBody();
    if (operation === "classify") return classifyBody();
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
    const path = OPERATIONS[operation].path;
    const json = JSON.stringify(body, null, 2);
    const curl = `curl ${origin}${path} \\\n  -H "Content-Type: application/json" \\\n` +
      `  -H "Authorization: Bearer $EMBEDDINGS_API_KEY" \\\n  -d @- <<'JSON'\n${json}\nJSON\n`;
    const requests = `import json\nimport os\n\nimport requests\n\nresponse = requests.post(\n` +
      `    "${origin}${path}",\n` +
      `    headers={"Authorization": f"Bearer {os.environ['EMBEDDINGS_API_KEY']}"},\n` +
      `    json=${python(body, 1)},\n    timeout=60,\n)\nprint(json.dumps(response.json(), indent=2))\n`;
    // JSON is a JavaScript expression, so the body is written as the page sends it.
    const fetchCode = `// Node.js 18+ (save as request.mjs, run node request.mjs) with EMBEDDINGS_API_KEY set.\n` +
      `const response = await fetch("${origin}${path}", {\n  method: "POST",\n  headers: {\n` +
      `    "Content-Type": "application/json",\n    Authorization: \`Bearer \${process.env.EMBEDDINGS_API_KEY}\`,\n  },\n` +
      `  body: JSON.stringify(${json.replaceAll("\n", "\n  ")}),\n});\n` +
      `console.log(JSON.stringify(await response.json(), null, 2));\n`;
    if (operation === "rerank") {
      const args = [`    model=${python(body.model, 1)},`, `    query=${python(body.query, 1)},`,
        `    documents=${python(body.documents, 1)},`];
      if ("top_n" in body) args.push(`    top_n=${body.top_n},`);
      const cohere = `import os\n\nimport cohere\n\n` +
        `client = cohere.ClientV2(api_key=os.environ["EMBEDDINGS_API_KEY"], base_url="${origin}")\n` +
        `response = client.rerank(\n${args.join("\n")}\n)\nprint(response.model_dump_json(indent=2))\n`;
      return { curl, openai: "", requests, fetch: fetchCode, cohere };
    }
    if (operation !== "embed") return { curl, openai: "", requests, fetch: fetchCode, cohere: "" };
    const extra = {};
    for (const name of ["task", "normalized", "truncate", "late_chunking"]) if (name in body) extra[name] = body[name];
    const args = [`    model=${python(body.model, 1)},`, `    input=${python(body.input, 1)},`,
      `    encoding_format=${python(body.embedding_type, 1)},`];
    if ("dimensions" in body) args.push(`    dimensions=${body.dimensions},`);
    if (Object.keys(extra).length) args.push(`    extra_body=${python(extra, 1)},`);
    const openai = `import os\n\nfrom openai import OpenAI\n\n` +
      `client = OpenAI(api_key=os.environ["EMBEDDINGS_API_KEY"], base_url="${origin}/v1")\n` +
      `response = client.embeddings.create(\n${args.join("\n")}\n)\nprint(response.model_dump_json(indent=2))\n`;
    return { curl, openai, requests, fetch: fetchCode, cohere: "" };
  }

  function render() {
    const code = snippets(requestBody());
    for (const name of Object.keys(code)) $(`#snippet-${name}`).textContent = code[name];
  }
  for (const id of ["#pg-task", "#pg-dimensions", "#pg-type", "#pg-normalized", "#pg-truncate", "#pg-late-chunking",
    "#pg-rerank-query", "#pg-rerank-documents", "#pg-rerank-top-n", "#pg-rerank-return-documents",
    "#pg-classify-inputs", "#pg-classify-labels", "#pg-classifier-id"]) {
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
  // A diverging scale: cosine 0 (unrelated) is neutral grey, similar pairs deepen to blue and
  // opposite ones to red, so only related pairs stand out. On a dark page the neutral end is a
  // dark grey and the cells brighten towards the same blue. The text is black or white, whichever
  // contrasts more with its cell (WCAG's relative luminance: at least 4.5 for any cell).
  // (Self-contained: tests/web/test_charts_browser.py evaluates it on its own.)
  function heatColour(value) {
    const v = Math.max(-1, Math.min(1, Number(value) || 0));
    const strength = Math.abs(v);
    const hue = v < 0 ? 4 : 212;
    const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;
    const saturation = (dark ? 70 : 78) * strength / 100;
    const lightness = (dark ? 20 + 22 * strength : 96 - 50 * strength) / 100;
    // hsl to linear sRGB (CSS Color 4's hslToRgb), then relative luminance.
    const k = (n) => (n + hue / 30) % 12;
    const a = saturation * Math.min(lightness, 1 - lightness);
    const channel = (n) => {
      const c = lightness - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    };
    const shade = 0.2126 * channel(0) + 0.7152 * channel(8) + 0.0722 * channel(4);
    return {
      background: `hsl(${hue}, ${(100 * saturation).toFixed(1)}%, ${(100 * lightness).toFixed(1)}%)`,
      color: 1.05 / (shade + 0.05) > (shade + 0.05) / 0.05 ? "#fff" : "#000",
    };
  }

  // A change of the system's theme while the page is open recolours the cells drawn.
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    document.querySelectorAll("#pg-heatmap-table td").forEach((cell) => {
      const colour = heatColour(cell.dataset.value);
      cell.style.background = colour.background;
      cell.style.color = colour.color;
    });
  });

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
        const colour = heatColour(value);
        cell.style.background = colour.background;
        cell.style.color = colour.color;
      });
    });
    $("#pg-heatmap").replaceChildren(table);
  }

  // --- rerank: the documents ranked, with their scores as bars ---------------------------
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function bar(fraction) {
    const track = element("div", "score-bar");
    const fill = element("span");
    fill.style.width = `${(100 * Math.max(0, Math.min(1, fraction))).toFixed(1)}%`;
    track.append(fill);
    return track;
  }
  // Bars from 0 (or the lowest score, if negative: cosine) to 1 (or the highest, if above: logits).
  function scaleOf(scores) {
    const low = Math.min(0, ...scores), high = Math.max(1, ...scores);
    return (score) => (high > low ? (score - low) / (high - low) : 0);
  }
  function documentText(result, documents) {
    const doc = result.document;
    if (typeof doc === "string") return doc;
    if (doc && typeof doc.text === "string") return doc.text;
    return documents[result.index] ?? "";
  }
  function ranking(results, documents) {
    const scale = scaleOf(results.map((result) => result.relevance_score));
    const list = element("ol", "ranking");
    list.id = "pg-ranking-list";
    for (const result of results) {
      const item = element("li", "ranked");
      item.dataset.index = result.index;
      item.dataset.score = result.relevance_score;
      const row = element("div", "score-row");
      const text = element("span", "score-text", documentText(result, documents));
      const score = element("span", "score", result.relevance_score.toFixed(4));
      score.title = `document ${result.index + 1}, relevance_score ${result.relevance_score}`;
      row.append(text, score);
      item.append(row, element("div", "muted small", `document ${result.index + 1}`), bar(scale(result.relevance_score)));
      list.append(item);
    }
    $("#pg-ranking").replaceChildren(list);
  }

  // --- classify: each input's labels with scores, the prediction highlighted ---------------
  function labelScores(predictions, predicted) {
    const list = element("ul", "label-scores");
    for (const entry of [...predictions].sort((a, b) => b.score - a.score)) {
      const item = element("li", entry.label === predicted ? "label-score prediction" : "label-score");
      item.dataset.label = entry.label;
      item.dataset.score = entry.score;
      const row = element("div", "score-row");
      const name = element("span", "score-text", entry.label);
      if (entry.label === predicted) name.append(" ", element("span", "badge ok", "prediction"));
      row.append(name, element("span", "score", entry.score.toFixed(4)));
      item.append(row, bar(entry.score));
      list.append(item);
    }
    return list;
  }
  function classifications(data, texts) {
    const box = element("div");
    box.id = "pg-labels-list";
    for (const result of data) {
      const section = element("section", "classification");
      section.dataset.index = result.index;
      section.append(element("p", "classified-input", texts[result.index] ?? `Input ${result.index + 1}`));
      if (Array.isArray(result.predictions)) {
        section.dataset.prediction = result.prediction;
        section.append(labelScores(result.predictions, result.prediction));
      } else {  // label groups: a prediction per group
        for (const [group, predictions] of Object.entries(result.predictions || {})) {
          section.append(element("p", "label-group", group), labelScores(predictions, result.prediction?.[group]));
        }
      }
      box.append(section);
    }
    $("#pg-labels").replaceChildren(box);
  }

  // --- the response, usage and cost (shared by the tabs) -----------------------------------
  function showResult(state) {
    $("#pg-error").hidden = true;
    if (!state) {
      $("#pg-usage").textContent = "Run a request to see its usage and cost.";
      delete $("#pg-usage").dataset.totalTokens;
      $("#pg-response").textContent = "{}";
      return;
    }
    $("#pg-response").textContent = JSON.stringify(state.data, null, 2);
    if (state.error) {
      $("#pg-error").hidden = false;
      $("#pg-error").textContent = state.error;
      return;
    }
    const usage = state.data.usage || {};
    const model = models.find((entry) => entry.name === state.model);
    const cost = (usage.total_tokens || 0) * (model?.price || 0) / 1e6;
    $("#pg-usage").replaceChildren(
      Object.assign(document.createElement("strong"), { id: "pg-total-tokens", textContent: `${usage.total_tokens} tokens` }),
      ` charged · ${usage.prompt_tokens ?? usage.total_tokens} prompt` +
      (usage.image_tokens ? ` · ${usage.image_tokens} image` : "") +
      (model ? ` · about $${cost.toFixed(6)} at $${model.price} per 1M tokens` : ""));
    $("#pg-usage").dataset.totalTokens = usage.total_tokens;
  }

  // --- run ---------------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    localStorage.setItem(KEY_STORAGE, key);
    if (!key) {
      // No request without a key: the API would only answer with an authorization code.
      const how = signedIn
        ? "Paste one of your API keys above, or use the button to create a key for the playground."
        : form.dataset.visitorTrials === "1"
          ? "You need an API key: get a free trial key with the button above, or sign up for an account."
          : "You need an API key: sign up for an account to get one.";
      shown[operation] = { data: {}, error: how, status: "" };
      showResult(shown[operation]);
      $("#pg-status").textContent = "";
      keyInput.focus();
      return;
    }
    const ran = operation;  // the tab may change while the request is out
    const body = requestBody();
    render();
    $("#pg-run").disabled = true;
    $("#pg-status").textContent = OPERATIONS[ran].busy;
    $("#pg-error").hidden = true;
    let state;
    try {
      const response = await fetch(`${origin}${OPERATIONS[ran].path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      let data;
      try { data = JSON.parse(text); } catch { data = { detail: text }; }
      state = { data, model: body.model || data.model };
      if (!response.ok) {
        state.error = `${response.status} ${data.code || ""}: ${data.detail || data.error?.message || text}`;
      } else if (ran === "rerank") {
        ranking(data.results || [], body.documents);
      } else if (ran === "classify") {
        classifications(data.data || [], body.input);
      } else {
        const type = body.embedding_type;
        const vectors = data.data.map((item) => vectorOf(item.embedding, type));
        if (vectors.every(Boolean)) heatmap(vectors);
      }
      state.status = state.error ? "" : `Done · request ${response.headers.get("X-Request-ID") || ""}`;
    } catch (error) {
      state = { data: {}, error: String(error), status: "" };
    } finally {
      $("#pg-run").disabled = !operationModels[operation].length;
    }
    shown[ran] = state;
    if (operation === ran) {
      showResult(state);
      $("#pg-status").textContent = state.status;
    }
  });

  // --- snippet tabs and copy buttons -------------------------------------------------------
  function showSnippet(name) {
    document.querySelectorAll(".snippet").forEach((box) => { box.hidden = box.dataset.snippet !== name; });
    document.querySelectorAll(".tab").forEach((other) => other.classList.toggle("active", other.dataset.tab === name));
  }
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => showSnippet(tab.dataset.tab)));
  document.querySelectorAll("[data-copy]").forEach((button) => button.addEventListener("click", async () => {
    const text = $(button.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
    catch { button.textContent = "Select and copy"; }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }));

  renderInputs();
  modelChanged();
  showOperation(window.location.hash.slice(1));
  window.addEventListener("hashchange", () => showOperation(window.location.hash.slice(1)));
})();
