// somnray review page: the queue of nights, one night's hypnogram and hypnodensity, an epoch's
// signals and probabilities, and keyboard scoring saved to <id>_corrections.csv by the service.
// Plain JavaScript drawing on <canvas>: no build step, nothing loaded from another site.
"use strict";

(() => {
  const STAGES = ["W", "N1", "N2", "N3", "REM"];
  const COLORS = { W: "#e8a33d", N1: "#8fd0f0", N2: "#4a90d9", N3: "#1f3d7a", REM: "#d9534f" };
  // Hypnogram rows from the top, as the scored nights' PNGs draw them.
  const LEVEL = { W: 0, REM: 1, N1: 2, N2: 3, N3: 4 };
  const KEY_STAGE = { w: "W", "1": "N1", "2": "N2", "3": "N3", r: "REM" };
  const TOKEN_KEY = "somnray.review.token";
  const CONTEXT = 1; // neighbouring epochs drawn on each side of the chosen one

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null, review: null, nights: [], selected: 0,
    night: null, cur: 0, qi: -1, traces: new Map(), tracesTimer: null,
    pending: new Map(), inFlight: false, saveError: null,
  };

  // -- token: from the address's fragment once (never sent to the server), then this tab only ---
  function takeToken() {
    const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search); // off the address bar
    }
    state.token = sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const resp = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin(headers.Authorization ? "The token was refused." : "");
      throw new ApiError(401, "token needed");
    }
    if (!resp.ok) throw new ApiError(resp.status, (body && body.detail) || resp.statusText);
    return body;
  }

  const v1 = (...parts) => "v1/review" + parts.map((p) => "/" + encodeURIComponent(p)).join("");

  function setView(name) {
    for (const v of ["login", "queue", "night"]) $(v + "-view").hidden = v !== name;
    document.body.dataset.view = name;
  }

  function status(text) { $("status").textContent = text; }

  function showLogin(message) {
    setView("login");
    $("forget").hidden = true;
    $("login-error").textContent = message || "";
    $("token-input").value = "";
    $("token-input").focus();
  }

  // -- queue of nights -------------------------------------------------------------------------
  async function start() {
    takeToken();
    let listing;
    try {
      listing = await api(v1());
    } catch (e) {
      if (e.status !== 401) status("The service did not answer: " + e.message);
      return;
    }
    $("forget").hidden = !state.token;
    const reviews = listing.reviews.map((r) => r.review);
    if (!reviews.length) {
      setView("queue");
      status("This service has no review: start it with --review <scored output>.");
      return;
    }
    const select = $("review-select");
    select.replaceChildren(...reviews.map((r) => new Option(r, r)));
    $("review-choice").hidden = reviews.length < 2;
    state.review = reviews.includes(state.review) ? state.review : reviews[0];
    select.value = state.review;
    await openQueue();
  }

  function fmt(x, digits = 1) {
    return x === null || x === undefined || x === "" ? "—" : Number(x).toFixed(digits);
  }
  const reasons = (text) => String(text || "").split(";").filter(Boolean).join(", ").replaceAll("_", " ");
  const pct = (x) => (x === null || x === undefined || x === "" ? "—" : (100 * x).toFixed(0) + " %");

  async function openQueue() {
    let doc;
    try {
      doc = await api(v1(state.review, "nights"));
    } catch (e) {
      if (e.status !== 401) { setView("queue"); status(e.message); }
      return;
    }
    state.nights = doc.nights;
    const body = $("nights").tBodies[0];
    body.replaceChildren(...doc.nights.map((n, i) => {
      const tr = document.createElement("tr");
      tr.dataset.index = String(i);
      tr.dataset.recordingId = n.recording_id;
      const cells = [
        [n.rank, "num"], [null, ""], [n.n_epochs, "num"], [fmt(n.expected_errors), "num"],
        [pct(n.expected_error_rate), "num"], [n.n_queued, "num"], [pct(n.low_confidence_fraction), "num"],
        [pct(n.missing_modality_fraction), "num"], [reasons(n.reasons), ""], [n.n_corrected ?? "—", "num"],
      ];
      cells.forEach(([text, cls], j) => {
        const td = document.createElement("td");
        if (cls) td.className = cls;
        if (j === 1) {
          const b = document.createElement("button");
          b.type = "button"; b.className = "open"; b.textContent = n.recording_id;
          b.setAttribute("aria-label", "Open night " + n.recording_id);
          b.addEventListener("click", (ev) => { ev.stopPropagation(); openNight(n.recording_id); });
          td.append(b);
        } else {
          td.textContent = text === null || text === undefined ? "" : String(text);
        }
        tr.append(td);
      });
      tr.addEventListener("click", () => openNight(n.recording_id));
      return tr;
    }));
    state.selected = Math.min(state.selected, Math.max(0, doc.nights.length - 1));
    markSelected();
    setView("queue");
    status(`${doc.nights.length} night(s) in review ${state.review}`);
  }

  function markSelected() {
    for (const tr of $("nights").tBodies[0].rows) {
      tr.setAttribute("aria-selected", String(Number(tr.dataset.index) === state.selected));
    }
  }

  // -- one night -------------------------------------------------------------------------------
  async function openNight(recordingId) {
    let night;
    try {
      night = await api(v1(state.review, "nights", recordingId));
    } catch (e) {
      if (e.status !== 401) status(e.message);
      return;
    }
    night.index = new Map(night.epoch.map((e, i) => [e, i]));
    night.corr = new Map(Object.entries(night.corrections).map(([e, s]) => [Number(e), s]));
    state.night = night;
    state.traces = new Map();
    state.pending = new Map();
    state.saveError = null;
    state.qi = night.queue.length ? 0 : -1;
    state.cur = state.qi >= 0 ? (night.index.get(night.queue[0].epoch) ?? 0) : 0;
    $("night-title").textContent = recordingId;
    document.title = recordingId + " · somnray review";
    setView("night");
    document.body.dataset.loaded = recordingId;
    status(`${night.n_epochs} epochs, ${night.queue.length} queued for review`);
    showSaveState();
    render();
  }

  function backToQueue() {
    state.night = null;
    delete document.body.dataset.loaded;
    document.title = "somnray review";
    openQueue();
  }

  function clock(seconds) {
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`;
  }

  function stageOf(i) {
    const n = state.night;
    return n.stage[i] >= 0 ? STAGES[n.stage[i]] : null;
  }

  function render() {
    const n = state.night;
    if (!n) return;
    const i = state.cur, epoch = n.epoch[i];
    const model = stageOf(i), corr = n.corr.get(epoch);
    const info = $("epoch-info");
    info.dataset.epoch = String(epoch);
    info.textContent = `Epoch ${epoch} (${i + 1}/${n.n_epochs}) · ${clock(n.start_offset_s + epoch * n.epoch_s)} from the start`;
    $("panel-title").textContent = `Epoch ${epoch}`;
    $("panel-model").textContent = model || "unscored";
    const pc = $("panel-correction");
    pc.textContent = corr ? corr + (state.pending.has(epoch) ? " (saving)" : "") : "—";
    pc.className = corr ? "set" : "";
    $("panel-confidence").textContent = n.confidence[i] === null ? "—" : pct(n.confidence[i]);
    $("panel-signals").textContent = n.modalities
      .map((m) => m.toUpperCase() + (n.available[m][i] ? "" : " (not usable)")).join(", ");
    const flags = Object.keys(n.flags).filter((f) => n.flags[f][i]).map((f) => f.replaceAll("_", " "));
    $("panel-flags").textContent = flags.join(", ") || "none";
    const q = n.queue.findIndex((r) => r.epoch === epoch);
    $("panel-queue").textContent = q >= 0
      ? `#${q + 1} of ${n.queue.length}` + (n.queue[q].reasons ? ` (${reasons(n.queue[q].reasons)})` : "")
      : "not queued";
    renderProbs(n.probabilities[i]);
    drawHypnogram();
    drawHypnodensity();
    requestTraces();
  }

  function renderProbs(p) {
    const list = $("probs");
    const top = p ? p.indexOf(Math.max(...p)) : -1;
    list.replaceChildren(...STAGES.map((s, k) => {
      const li = document.createElement("li");
      if (k === top) li.className = "top";
      const name = document.createElement("span");
      name.textContent = s;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = p ? (100 * p[k]).toFixed(1) + "%" : "0";
      fill.style.background = COLORS[s];
      track.append(fill);
      const value = document.createElement("span");
      value.className = "pct";
      value.textContent = p ? (100 * p[k]).toFixed(0) + "%" : "—";
      li.setAttribute("aria-label", `${s}: ${p ? (100 * p[k]).toFixed(0) + " percent" : "no probability"}`);
      li.append(name, track, value);
      return li;
    }));
  }

  // -- drawing ---------------------------------------------------------------------------------
  function canvas2d(el) {
    const ratio = window.devicePixelRatio || 1;
    const w = el.clientWidth, h = el.clientHeight;
    if (el.width !== Math.round(w * ratio) || el.height !== Math.round(h * ratio)) {
      el.width = Math.round(w * ratio);
      el.height = Math.round(h * ratio);
    }
    const ctx = el.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "12px system-ui, sans-serif";
    return [ctx, w, h];
  }

  const LEFT = 58; // room for the row labels of the hypnogram, hypnodensity and traces

  function epochX(i, w) {
    return LEFT + (i / state.night.n_epochs) * (w - LEFT - 4);
  }

  function drawCursor(ctx, w, h) {
    const x0 = epochX(state.cur, w), x1 = Math.max(epochX(state.cur + 1, w), x0 + 2);
    ctx.fillStyle = "rgba(31,111,235,0.18)";
    ctx.fillRect(x0 - 1, 0, x1 - x0 + 2, h);
    ctx.fillStyle = "#1f6feb";
    ctx.fillRect(x0 - 1, 0, 1.5, h);
  }

  function drawHypnogram() {
    const n = state.night;
    const [ctx, w, h] = canvas2d($("hypnogram"));
    const top = 8, rowH = (h - top - 14) / 5;
    const y = (s) => top + (LEVEL[s] + 0.5) * rowH;
    ctx.fillStyle = "#5b6475";
    ctx.textBaseline = "middle";
    for (const s of Object.keys(LEVEL)) {
      ctx.fillText(s, 6, y(s));
      ctx.fillStyle = "#eef1f5";
      ctx.fillRect(LEFT, y(s), w - LEFT - 4, 1);
      ctx.fillStyle = "#5b6475";
    }
    // Unscored epochs as grey bands, queued epochs as ticks along the bottom.
    ctx.fillStyle = "#d5dae3";
    n.stage.forEach((s, i) => { if (s < 0) ctx.fillRect(epochX(i, w), top, Math.max(1, epochX(i + 1, w) - epochX(i, w)), 5 * rowH); });
    ctx.fillStyle = "#7a869a";
    for (const q of n.queue) {
      const i = n.index.get(q.epoch);
      if (i !== undefined) ctx.fillRect(epochX(i, w), h - 10, Math.max(1.5, epochX(i + 1, w) - epochX(i, w)), 6);
    }
    // The model's step hypnogram.
    ctx.strokeStyle = "#3b4252";
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    let drawing = false;
    n.stage.forEach((code, i) => {
      if (code < 0) { drawing = false; return; }
      const yy = y(STAGES[code]), x0 = epochX(i, w), x1 = epochX(i + 1, w);
      if (drawing) ctx.lineTo(x0, yy); else ctx.moveTo(x0, yy);
      ctx.lineTo(x1, yy);
      drawing = true;
    });
    ctx.stroke();
    // Corrections on top: a thick magenta mark at the corrected stage.
    ctx.fillStyle = "#c2185b";
    for (const [epoch, s] of n.corr) {
      const i = n.index.get(epoch);
      if (i === undefined) continue;
      const x0 = epochX(i, w), x1 = Math.max(epochX(i + 1, w), x0 + 3);
      ctx.fillRect(x0, y(s) - 3, x1 - x0, 6);
    }
    drawCursor(ctx, w, h);
    // Time axis: hours from the recording start.
    ctx.fillStyle = "#5b6475";
    ctx.textBaseline = "bottom";
    const hours = (n.n_epochs * n.epoch_s) / 3600;
    for (let hr = 1; hr < hours; hr++) ctx.fillText(hr + " h", epochX((hr * 3600) / n.epoch_s, w) + 2, h);
  }

  function drawHypnodensity() {
    const n = state.night;
    const [ctx, w, h] = canvas2d($("hypnodensity"));
    ctx.fillStyle = "#5b6475";
    ctx.textBaseline = "middle";
    ctx.fillText("P(stage)", 0, h / 2);
    n.probabilities.forEach((p, i) => {
      if (!p) return;
      const x0 = epochX(i, w), dx = Math.max(1, epochX(i + 1, w) - x0 + 0.5);
      let acc = 0;
      STAGES.forEach((s, k) => {
        ctx.fillStyle = COLORS[s];
        ctx.fillRect(x0, acc * h, dx, p[k] * h + 0.5);
        acc += p[k];
      });
    });
    drawCursor(ctx, w, h);
  }

  function requestTraces() {
    clearTimeout(state.tracesTimer);
    const n = state.night, epoch = n.epoch[state.cur];
    if (state.traces.has(epoch)) { drawTraces(state.traces.get(epoch)); return; }
    drawTraces(null);
    // Holding an arrow key walks through epochs: fetch only where the walk stops.
    state.tracesTimer = setTimeout(async () => {
      try {
        const doc = await api(v1(state.review, "nights", n.recording_id, "epochs", epoch) + `?context=${CONTEXT}`);
        if (state.traces.size > 64) state.traces.clear();
        state.traces.set(epoch, doc);
      } catch (e) {
        state.traces.set(epoch, { error: e.status === 404 ? "No signals kept for this epoch." : e.message });
      }
      if (state.night === n && n.epoch[state.cur] === epoch) drawTraces(state.traces.get(epoch));
    }, 120);
  }

  function drawTraces(doc) {
    const el = $("traces");
    const [ctx, w, h] = canvas2d(el);
    const n = state.night, epoch = n.epoch[state.cur];
    if (!doc || doc.error) {
      ctx.fillStyle = "#5b6475";
      ctx.textBaseline = "middle";
      ctx.fillText(doc ? doc.error : "Loading signals…", LEFT + 10, h / 2);
      el.dataset.epoch = "";
      return;
    }
    const shown = doc.epochs, mods = Object.keys(doc.signals);
    const secs = shown.length * 30, plotW = w - LEFT - 6, sx = plotW / secs;
    const curStart = shown.indexOf(epoch) * 30;
    // Neighbouring epochs greyed, one-second grid, 30-s boundaries.
    ctx.fillStyle = "#f0f2f5";
    ctx.fillRect(LEFT, 0, plotW, h);
    ctx.fillStyle = "#fff";
    ctx.fillRect(LEFT + curStart * sx, 0, 30 * sx, h);
    for (let s = 0; s <= secs; s++) {
      ctx.fillStyle = s % 30 === 0 ? "#9aa3b2" : "#e6e9ef";
      ctx.fillRect(LEFT + s * sx, 0, 1, h);
    }
    const rowH = h / Math.max(1, mods.length);
    mods.forEach((m, r) => {
      const sig = doc.signals[m], mid = rowH * (r + 0.5), gain = (rowH * 0.45) / (sig.scale || 1);
      ctx.fillStyle = "#1d2330";
      ctx.textBaseline = "middle";
      ctx.fillText(m.toUpperCase(), 6, mid);
      ctx.strokeStyle = "#1d2330";
      ctx.lineWidth = 0.8;
      sig.epochs.forEach((pts, k) => {
        const x0 = LEFT + k * 30 * sx;
        if (!pts) return;
        if (!sig.available[k]) {
          ctx.fillStyle = "#b42318";
          ctx.fillText("not usable", x0 + 4, mid - rowH * 0.35);
        }
        ctx.strokeStyle = shown[k] === epoch ? "#1d2330" : "#7a869a";
        ctx.beginPath();
        const step = 1 / doc.points_per_s;
        pts.forEach((v, j) => {
          const x = x0 + j * step * sx;
          const yy = mid - Math.max(-rowH / 2, Math.min(rowH / 2, v * gain));
          if (j === 0) ctx.moveTo(x, yy); else ctx.lineTo(x, yy);
        });
        ctx.stroke();
      });
      if (r > 0) { ctx.fillStyle = "#d5dae3"; ctx.fillRect(0, rowH * r, w, 1); }
    });
    el.dataset.epoch = String(epoch);
  }

  // -- moving and scoring ------------------------------------------------------------------------
  function go(i) {
    const n = state.night;
    state.cur = Math.max(0, Math.min(n.n_epochs - 1, i));
    render();
  }

  function goUncertain(step) {
    const n = state.night;
    if (!n.queue.length) { status("No epoch of this night is queued for review."); return; }
    const epoch = n.epoch[state.cur];
    const here = n.queue.findIndex((r) => r.epoch === epoch);
    // From a queued epoch, its neighbour in the queue; elsewhere (staging an epoch moves on), the
    // one after the queued epoch last visited, or back to that one.
    const from = here >= 0 ? here : step > 0 ? state.qi : state.qi + 1;
    const to = from + step;
    if (to < 0 || to >= n.queue.length) {
      status(to < 0 ? "This is the most uncertain queued epoch." : "No queued epoch after this one.");
      return;
    }
    state.qi = to;
    const i = n.index.get(n.queue[state.qi].epoch);
    if (i !== undefined) go(i);
  }

  function setStage(stage) {
    const n = state.night, epoch = n.epoch[state.cur];
    if (stage === null) n.corr.delete(epoch); else n.corr.set(epoch, stage);
    state.pending.set(epoch, stage);
    flush();
    if (stage !== null && state.cur < n.n_epochs - 1) go(state.cur + 1); else render();
  }

  function showSaveState() {
    const el = $("save-state");
    const n = state.night;
    if (state.saveError) {
      el.dataset.state = "error";
      el.textContent = "Not saved: " + state.saveError;
    } else if (state.inFlight || state.pending.size) {
      el.dataset.state = "saving";
      el.textContent = "Saving…";
    } else {
      el.dataset.state = n && n.corr.size ? "saved" : "idle";
      el.textContent = n && n.corr.size ? `✓ ${n.corr.size} correction(s) saved` : "No corrections yet";
    }
  }

  // One save at a time, carrying every change made meanwhile: the file is always written whole
  // by the service, so the last answer is what is on disk.
  async function flush() {
    showSaveState();
    if (state.inFlight || !state.pending.size || !state.night) return;
    const n = state.night, sent = new Map(state.pending);
    state.pending.clear();
    state.inFlight = true;
    showSaveState();
    try {
      const doc = await api(v1(state.review, "nights", n.recording_id, "corrections"), {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ corrections: Object.fromEntries(sent) }),
      });
      state.saveError = null;
      if (state.night === n) {
        // The saved file, with the changes made while it was being written laid over it.
        n.corr = new Map(Object.entries(doc.corrections).map(([e, s]) => [Number(e), s]));
        for (const [e, s] of state.pending) { if (s === null) n.corr.delete(e); else n.corr.set(e, s); }
      }
    } catch (e) {
      state.saveError = e.message;
      for (const [e2, s] of sent) if (!state.pending.has(e2)) state.pending.set(e2, s);
    } finally {
      state.inFlight = false;
    }
    if (state.night === n) { render(); }
    if (state.pending.size && !state.saveError) flush(); else showSaveState();
  }

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const view = document.body.dataset.view;
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (view === "queue") {
      const rows = state.nights.length;
      if (!rows) return;
      if (key === "ArrowDown" || key === "j") state.selected = Math.min(rows - 1, state.selected + 1);
      else if (key === "ArrowUp" || key === "k") state.selected = Math.max(0, state.selected - 1);
      else if (key === "Enter") { openNight(state.nights[state.selected].recording_id); ev.preventDefault(); return; }
      else return;
      ev.preventDefault();
      markSelected();
      return;
    }
    if (view !== "night" || !state.night) return;
    if (key in KEY_STAGE) setStage(KEY_STAGE[key]);
    else if (key === "Backspace" || key === "Delete") setStage(null);
    else if (key === "ArrowRight" || key === "n" || key === "j") go(state.cur + 1);
    else if (key === "ArrowLeft" || key === "p" || key === "k") go(state.cur - 1);
    else if (key === "u") goUncertain(ev.shiftKey ? -1 : 1);
    else if (key === "Home") go(0);
    else if (key === "End") go(state.night.n_epochs - 1);
    else if (key === "Escape") backToQueue();
    else return;
    ev.preventDefault();
  }

  function epochAt(ev) {
    const rect = ev.currentTarget.getBoundingClientRect();
    const frac = (ev.clientX - rect.left - LEFT) / (rect.width - LEFT - 4);
    return Math.floor(frac * state.night.n_epochs);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.addEventListener("keydown", onKey);
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      $("token-input").value = "";
      start();
    });
    $("forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); state.token = null; showLogin(""); });
    $("review-select").addEventListener("change", (ev) => { state.review = ev.target.value; state.selected = 0; openQueue(); });
    $("back").addEventListener("click", backToQueue);
    for (const id of ["hypnogram", "hypnodensity"]) {
      $(id).addEventListener("click", (ev) => { if (state.night) go(epochAt(ev)); });
    }
    window.addEventListener("resize", () => { if (state.night) render(); });
    window.addEventListener("beforeunload", (ev) => {
      if (state.pending.size || state.inFlight) { ev.preventDefault(); ev.returnValue = ""; }
    });
    start();
  });
})();
