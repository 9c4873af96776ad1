// honed's web monitor: draws the pages from the JSON API (/api/...) and keeps them live
// with one server-sent events stream (/api/live). No framework, no build step: plain
// DOM, and uPlot (vendored) for the charts.
"use strict";

// --- small tools -------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function api(path, options = {}) {
  const response = await fetch(path, {credentials: "same-origin", ...options,
    headers: {"Content-Type": "application/json", ...(options.headers || {})}});
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function notify(message, kind = "info") {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = kind;
  box.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 15000 : 6000);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  seconds = Math.round(seconds);
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor(seconds % 3600 / 60)).padStart(2, "0")}m`;
}

function num(value, digits = 4) {
  return typeof value === "number" ? Number(value.toPrecision(digits)).toString() : (value ?? "");
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function stateBadge(state) {
  return h("span", {class: `state state-${state}`, dataset: {state}}, state);
}

function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), ...children);
}

function table(headers, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map(t => h("th", {}, t)))),
           h("tbody", {}, rows));
}

// A button that runs an API call, shows it is busy, and reports the answer.
function actionButton(label, run, {confirmText = null, kind = ""} = {}) {
  const button = h("button", {class: kind, dataset: {action: label.toLowerCase()}}, label);
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    const text = button.textContent;
    button.textContent = `${text}…`;
    try {
      const answer = await run();
      if (answer && answer.message) notify(answer.message);
    } catch (err) {
      notify(err.message, "error");
    } finally {
      button.disabled = false;
      button.textContent = text;
    }
  });
  return button;
}

function control(jobId, command) {
  return api(`/api/jobs/${jobId}/${command}?wait_s=120`, {method: "POST"});
}

// --- the live stream ---------------------------------------------------------------

const liveHandlers = new Set();

function onLive(handler) { liveHandlers.add(handler); }

function connectLive() {
  const badge = document.getElementById("live-state");
  const source = new EventSource("/api/live");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "pill ok"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting"; badge.className = "pill warn"; });
  for (const name of ["status", "event", "metrics", "system", "error"]) {
    source.addEventListener(name, message => {
      const data = JSON.parse(message.data);
      if (name === "error") notify(data.error, "error");
      for (const handler of liveHandlers) handler(name, data);
    });
  }
}

// --- charts ------------------------------------------------------------------------

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];

// One uPlot chart of metrics by step. ``series``: [{key, label, kind}], kind being the
// metrics kind (train, eval) the key comes from.
class Curve {
  constructor(parent, name, title, series) {
    this.series = series;
    this.points = new Map();  // step -> {key: value}
    this.el = h("div", {class: "chart", dataset: {chart: name, points: "0"}});
    parent.append(this.el);
    const width = Math.max(280, Math.min(560, parent.clientWidth / 2 - 24));
    this.plot = new uPlot({
      title, width, height: 200,
      scales: {x: {time: false}},
      series: [{label: "step"}, ...series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
        points: {show: s.kind === "eval"}, value: (u, v) => num(v),
      }))],
      axes: [{}, {size: 60, values: (u, vals) => vals.map(v => num(v, 3))}],
    }, [[], ...series.map(() => [])], this.el);
    this.pending = false;
  }

  add(kind, rows) {
    let changed = false;
    for (const row of rows) {
      for (const s of this.series) {
        if (s.kind !== kind || typeof row[s.key] !== "number") continue;
        if (!this.points.has(row.step)) this.points.set(row.step, {});
        this.points.get(row.step)[s.key] = row[s.key];
        changed = true;
      }
    }
    if (changed && !this.pending) {
      this.pending = true;
      requestAnimationFrame(() => this.redraw());
    }
  }

  redraw() {
    this.pending = false;
    const steps = [...this.points.keys()].sort((a, b) => a - b);
    const data = [steps, ...this.series.map(s => steps.map(step => this.points.get(step)[s.key] ?? null))];
    this.plot.setData(data);
    this.el.dataset.points = String(steps.length);
  }
}

// The charts of one run, fed with its history and then its live rows.
class RunCharts {
  constructor(parent, runId) {
    this.runId = runId;
    this.el = h("div", {class: "charts", dataset: {run: runId}});
    parent.append(this.el);
    this.curves = [
      new Curve(this.el, "loss", "loss", [{key: "loss", label: "train loss", kind: "train"},
                                         {key: "val_loss", label: "validation loss", kind: "eval"}]),
      new Curve(this.el, "lr", "learning rate", [{key: "lr", label: "lr", kind: "train"}]),
      new Curve(this.el, "tokens", "tokens/s", [{key: "tokens_per_s", label: "tokens/s", kind: "train"}]),
      new Curve(this.el, "memory", "memory (MiB)", [{key: "rss_mb", label: "RSS", kind: "train"},
                                                   {key: "peak_rss_mb", label: "peak RSS", kind: "train"},
                                                   {key: "peak_accel_mb", label: "peak accelerator", kind: "train"}]),
    ];
    this.heat = null;
  }

  async load() {
    for (const kind of ["train", "eval"]) {
      let after = -1;
      for (;;) {
        const page = await api(`/api/runs/${this.runId}/metrics?kind=${kind}&after_step=${after}`);
        this.add(kind, page.rows);
        if (page.next_after_step === null) break;
        after = page.next_after_step;
      }
    }
  }

  add(kind, rows) {
    if (kind === "layers") { if (this.heat) this.heat.add(rows); return; }
    for (const curve of this.curves) curve.add(kind, rows);
  }

  remove() { this.el.remove(); }
}

// A heat map of per-layer LoRA change (norm of B·A) over the logged steps.
class LayerHeatMap {
  constructor(parent) {
    this.rows = new Map();  // step -> {key: value}
    this.canvas = h("canvas", {height: 10});
    this.caption = h("p", {class: "muted"}, "No per-layer figures yet (logged every telemetry.layer_stats_every steps).");
    this.el = h("div", {class: "heatmap", dataset: {heatmap: "layers", steps: "0"}}, this.canvas, this.caption);
    parent.append(this.el);
    this.canvas.addEventListener("mousemove", e => this.hover(e));
  }

  add(rows) {
    for (const row of rows) {
      const values = {};
      for (const [key, value] of Object.entries(row)) if (key.startsWith("layer.") && typeof value === "number") values[key] = value;
      if (Object.keys(values).length) this.rows.set(row.step, values);
    }
    this.draw();
  }

  keys() {
    const keys = new Set();
    for (const values of this.rows.values()) for (const key of Object.keys(values)) keys.add(key);
    const order = key => { const [, layer, module] = key.split("."); return [Number(layer), module]; };
    return [...keys].sort((a, b) => { const [la, ma] = order(a), [lb, mb] = order(b); return la - lb || ma.localeCompare(mb); });
  }

  draw() {
    const steps = [...this.rows.keys()].sort((a, b) => a - b);
    const keys = this.keys();
    this.el.dataset.steps = String(steps.length);
    if (!steps.length) return;
    const label = 110, cell = 10;
    const width = Math.max(300, Math.min(1100, this.el.clientWidth || 800));
    const cw = Math.max(2, (width - label) / steps.length);
    this.canvas.width = width;
    this.canvas.height = keys.length * cell + 20;
    const ctx = this.canvas.getContext("2d");
    let max = 0;
    for (const values of this.rows.values()) for (const v of Object.values(values)) max = Math.max(max, v);
    ctx.font = "9px sans-serif";
    keys.forEach((key, r) => {
      ctx.fillStyle = "#444";
      ctx.fillText(key.replace("layer.", "L"), 2, r * cell + 8);
      steps.forEach((step, c) => {
        const v = this.rows.get(step)[key];
        const t = max > 0 && v !== undefined ? Math.sqrt(v / max) : 0;
        ctx.fillStyle = `hsl(${240 - 200 * t}, 80%, ${92 - 52 * t}%)`;
        ctx.fillRect(label + c * cw, r * cell, Math.ceil(cw), cell - 1);
      });
    });
    ctx.fillStyle = "#444";
    ctx.fillText(`step ${steps[0]}`, label, keys.length * cell + 14);
    ctx.fillText(`step ${steps[steps.length - 1]}`, width - 60, keys.length * cell + 14);
    this.caption.textContent = `‖B·A‖ per layer and module, ${steps.length} samples; brighter = larger (max ${num(max, 3)}).`;
    this.layout = {label, cell, cw, steps, keys};
  }

  hover(e) {
    if (!this.layout) return;
    const {label, cell, cw, steps, keys} = this.layout;
    const c = Math.floor((e.offsetX - label) / cw), r = Math.floor(e.offsetY / cell);
    if (c < 0 || r < 0 || c >= steps.length || r >= keys.length) return;
    this.canvas.title = `${keys[r]} at step ${steps[c]}: ${num(this.rows.get(steps[c])[keys[r]], 4)}`;
  }
}

// --- overview ----------------------------------------------------------------------

function jobControls(job) {
  const buttons = [];
  const act = command => () => control(job.job ?? job.id, command);
  if (["running", "evaluating"].includes(job.state)) {
    buttons.push(actionButton("Pause", act("pause")), actionButton("Stop", act("stop")),
                 actionButton("Cancel", act("cancel"), {confirmText: `Cancel job ${job.job ?? job.id}?`, kind: "danger"}));
  } else if (["paused", "skipped"].includes(job.state)) {
    buttons.push(actionButton("Resume", act("resume")),
                 actionButton("Cancel", act("cancel"), {confirmText: `Cancel job ${job.job ?? job.id}?`, kind: "danger"}));
  } else if (job.state === "queued") {
    buttons.push(actionButton("Pause", act("pause")), actionButton("Skip", act("skip")),
                 actionButton("Cancel", act("cancel"), {confirmText: `Cancel job ${job.job ?? job.id}?`, kind: "danger"}));
  }
  return h("span", {class: "controls"}, buttons);
}

function progressBlock(job) {
  const p = job.progress || {};
  if (p.phase && p.phase !== "training") return h("p", {}, p.phase);
  if (!p.total_steps) return h("p", {class: "muted"}, "starting…");
  return h("div", {class: "progress"},
    h("progress", {max: p.total_steps, value: p.step}),
    h("span", {dataset: {field: "progress"}}, `step ${p.step} / ${p.total_steps}`),
    h("span", {}, `loss ${num(p.loss)}`),
    h("span", {}, `${Math.round(p.tokens_per_s || 0).toLocaleString()} tok/s`),
    h("span", {}, `ETA ${duration(p.eta_s)}`));
}

function queueRow(job) {
  const priority = h("select", {onchange: async e => {
    try { await api(`/api/jobs/${job.job}`, {method: "PATCH", body: JSON.stringify({priority: e.target.value})}); }
    catch (err) { notify(err.message, "error"); }
  }}, ["high", "normal", "low"].map(p => h("option", {value: p, selected: p === job.priority}, p)));
  return h("tr", {dataset: {job: job.job}},
    h("td", {}, h("a", {href: `/jobs/${job.job}`}, `#${job.job}`)), h("td", {}, stateBadge(job.state)),
    h("td", {}, job.track), h("td", {}, job.state === "queued" ? priority : job.priority),
    h("td", {}, job.datasets.join(", ")), h("td", {class: "muted"}, job.error || (job.retry_at ? `retry at ${when(job.retry_at)}` : "")),
    h("td", {}, jobControls(job)));
}

async function overview(view) {
  const daemonBox = h("div", {id: "daemon"});
  const runningBox = h("div", {id: "running"});
  const chartsBox = h("div", {id: "charts"});
  const queueBox = h("div", {id: "queue"});
  const recentBox = h("div", {id: "recent"});
  view.append(section("Daemon", daemonBox), section("Running", runningBox), section("Training curves", chartsBox),
              section("Queue", queueBox), section("Recent jobs", recentBox));
  let charts = null;

  async function showRun(runId, caption) {
    if (charts && charts.runId === runId) return;
    if (charts) charts.remove();
    chartsBox.replaceChildren(h("p", {class: "muted"}, caption));
    charts = new RunCharts(chartsBox, runId);
    await charts.load();
  }

  async function recent() {
    const jobs = await api("/api/jobs?limit=15");
    recentBox.replaceChildren(table(["job", "state", "track", "run", "created", "note"], jobs.map(j => h("tr", {},
      h("td", {}, h("a", {href: `/jobs/${j.id}`}, `#${j.id}`)), h("td", {}, stateBadge(j.state)), h("td", {}, j.track),
      h("td", {}, j.run_id || ""), h("td", {}, when(j.created_at)), h("td", {class: "muted"}, (j.error || "").split("\n")[0])))));
  }

  let lastStates = "";
  function render(status) {
    const d = status.daemon;
    daemonBox.replaceChildren(h("p", {},
      h("span", {class: `pill ${d.up ? "ok" : "warn"}`, dataset: {daemon: d.up ? "up" : "down"}}, d.up ? "daemon up" : "daemon down"), " ",
      d.up ? `pid ${d.pid} on ${d.host}${d.activity ? ", " + d.activity : ""}` : (d.last_seen ? `last seen ${when(d.last_seen)} (${d.last_exit})` : "never started"),
      status.stop_file ? h("strong", {class: "danger"}, "  STOP file present: nothing trains") : null),
      h("p", {class: "muted"}, `base v${status.base ? status.base.version : "?"} · ${status.tracks.map(t => `${t.name}: ${t.deployed ? t.deployed.name : "bare base"}`).join(" · ")}`));
    runningBox.replaceChildren(...(status.running.length ? status.running.map(job => h("div", {class: "job-card", dataset: {job: job.job, state: job.state}},
      h("h3", {}, h("a", {href: `/jobs/${job.job}`}, `Job #${job.job}`), " ", stateBadge(job.state), ` track ${job.track}`),
      progressBlock(job), jobControls(job))) : [h("p", {class: "muted"}, "Nothing is training.")]));
    queueBox.replaceChildren(status.queue.length
      ? table(["job", "state", "track", "priority", "datasets", "note", ""], status.queue.map(queueRow))
      : h("p", {class: "muted"}, "The queue is empty."));
    const run = status.running.find(j => j.run);
    if (run) showRun(run.run, `Job #${run.job}, run ${run.run} (live)`);
    else if (!charts && status.runs.length) showRun(status.runs[0].run, `Last run: ${status.runs[0].run} (${status.runs[0].status})`);
    const states = JSON.stringify([status.running.map(j => [j.job, j.state]), status.queue.map(j => [j.job, j.state])]);
    if (states !== lastStates) { lastStates = states; recent(); }
  }

  render(await api("/api/status"));
  onLive((name, data) => {
    if (name === "status") render(data);
    if (name === "metrics" && charts && data.run === charts.runId) charts.add(data.kind, data.rows);
  });
}

// --- one job -----------------------------------------------------------------------

function evaluationTable(adapter) {
  const ev = adapter.evaluation;
  if (!ev || !ev.candidate) return h("p", {class: "muted"}, "Not evaluated yet.");
  const rows = [];
  for (const [set, figures] of Object.entries(ev.candidate)) {
    for (const [figure, value] of Object.entries(figures)) {
      if (figure === "samples" || figure === "n") continue;
      const base = ((ev.baseline || {})[set] || {})[figure];
      rows.push(h("tr", {}, h("td", {}, set), h("td", {}, figure), h("td", {}, num(value)), h("td", {}, num(base))));
    }
  }
  return table(["set", "figure", "candidate", ev.baseline_name || "baseline"], rows);
}

function verdictBlock(adapter) {
  const v = adapter.verdict;
  if (!v) return h("p", {class: "muted"}, "No gate verdict yet.");
  return h("div", {class: "verdict", dataset: {passed: String(v.passed)}},
    h("p", {}, h("strong", {class: v.passed ? "ok" : "danger"}, v.passed ? "passed its gates" : "failed its gates"),
      v.require_approval ? " (needs approval)" : ""),
    h("ul", {}, (v.rules || []).map(rule => h("li", {class: rule.ok ? "" : "danger"},
      `${rule.ok ? "ok" : "FAIL"} ${rule.rule}: ${rule.detail}`))));
}

async function jobPage(view, jobId) {
  const head = h("div", {id: "job-head"});
  const chartsBox = h("div", {});
  const layersBox = h("div", {});
  const eventsBody = h("tbody", {});
  const checkpointsBox = h("div", {});
  const adaptersBox = h("div", {});
  view.append(head, section("Training curves", chartsBox), section("Layer activity", layersBox),
              section("Evaluation and gates", adaptersBox), section("Checkpoints", checkpointsBox),
              section("Events", h("table", {id: "events"}, h("thead", {}, h("tr", {}, ["time", "event", "message"].map(t => h("th", {}, t)))), eventsBody)));
  let charts = null, lastEvent = 0, progress = null;

  async function refresh() {
    const job = await api(`/api/jobs/${jobId}`);
    head.replaceChildren(...[
      h("h1", {}, `Job #${job.id} `, stateBadge(job.state)),
      h("p", {}, `track ${job.track} · priority ${job.priority} · datasets ${job.dataset_ids.join(", ")} · run ${job.run_id || "not started"} · ${job.failures} failed attempts · from ${job.source}`),
      job.error ? h("pre", {class: "error"}, job.error) : null,
      progress && ["running", "evaluating"].includes(job.state) ? progressBlock(progress) : null,
      jobControls(job)].filter(Boolean));
    checkpointsBox.replaceChildren(job.checkpoints.length
      ? table(["step", "complete", "written"], job.checkpoints.map(c => h("tr", {}, h("td", {}, c.step), h("td", {}, c.complete ? "yes" : "no"), h("td", {}, when(c.created_at)))))
      : h("p", {class: "muted"}, "No checkpoints yet."));
    adaptersBox.replaceChildren(...(job.adapters.length ? job.adapters.map(a => h("div", {class: "adapter", dataset: {adapter: a.id}},
      h("h3", {}, `${a.name} `, stateBadge(a.state)), verdictBlock(a), evaluationTable(a))) : [h("p", {class: "muted"}, "No adapter yet.")]));
    if (job.run_id && !charts) {
      charts = new RunCharts(chartsBox, job.run_id);
      charts.heat = new LayerHeatMap(layersBox);
      await charts.load();
      const layers = await api(`/api/runs/${job.run_id}/metrics?kind=layers&limit=50000`).catch(() => null);
      if (layers) charts.heat.add(layers.rows);
    }
  }

  function addEvents(events) {
    for (const e of events) {
      if (e.id <= lastEvent) continue;
      lastEvent = e.id;
      eventsBody.append(h("tr", {dataset: {kind: e.kind}}, h("td", {}, when(e.at)), h("td", {}, e.kind), h("td", {}, e.message)));
    }
  }

  await refresh();
  addEvents(await api(`/api/jobs/${jobId}/events`));
  let pending = null;
  onLive((name, data) => {
    if (name === "event" && data.job_id === jobId) {
      addEvents([data]);
      clearTimeout(pending);
      pending = setTimeout(refresh, 200);
    }
    if (name === "status") {
      const mine = data.running.find(j => j.job === jobId);
      if (mine) {
        progress = mine;
        const block = head.querySelector(".progress");
        if (block) block.replaceWith(progressBlock(mine));
      }
    }
    if (name === "metrics" && data.job === jobId && charts) charts.add(data.kind, data.rows);
  });
}

// --- adapters and deployments -----------------------------------------------------

async function adaptersPage(view) {
  const box = h("div", {});
  view.append(h("h1", {}, "Adapters and deployments"), box);

  async function refresh() {
    const [tracks, adapters] = await Promise.all([api("/api/tracks"), api("/api/adapters")]);
    const sections = [];
    for (const track of tracks) {
      const history = await api(`/api/tracks/${track.name}/deployments?limit=20`);
      const mine = adapters.filter(a => a.track === track.name);
      const figure = (a, set) => num((((a.evaluation || {}).candidate || {})[set] || {}).exact_match, 3);
      sections.push(h("section", {class: "track", dataset: {track: track.name}},
        h("h2", {}, `Track ${track.name} `, h("span", {class: "muted"}, `base v${track.base_version}`)),
        h("p", {}, "Live: ", h("strong", {dataset: {deployed: track.deployed ? track.deployed.id : "base"}},
          track.deployed ? `${track.deployed.name} (adapter ${track.deployed.id})` : "the bare base"), " ",
          history.length ? actionButton("Rollback", () => api(`/api/tracks/${track.name}/rollback`, {method: "POST", body: "{}"}).then(r => { refresh(); return {message: `track ${r.track}: ${r.name || "bare base"} is live`}; }),
            {confirmText: `Roll track ${track.name} back to what was live before?`, kind: "danger"}) : null),
        mine.length ? table(["adapter", "state", "verdict", "held-out EM", "regression EM", "created", ""], mine.map(a => h("tr", {dataset: {adapter: a.id}},
          h("td", {}, a.job_id ? h("a", {href: `/jobs/${a.job_id}`}, a.name) : a.name), h("td", {}, stateBadge(a.state)),
          h("td", {}, a.verdict ? (a.verdict.passed ? "passed" : h("span", {class: "danger", title: (a.verdict.failed || []).join("\n")}, "failed")) : ""),
          h("td", {}, figure(a, "heldout")), h("td", {}, figure(a, "regression")), h("td", {}, when(a.created_at)),
          h("td", {}, adapterActions(a, refresh))))) : h("p", {class: "muted"}, "No adapters yet."),
        h("h3", {}, "History"),
        history.length ? table(["time", "action", "live", "before", "reason", "hooks"], history.map(d => h("tr", {},
          h("td", {}, when(d.at)), h("td", {}, d.action), h("td", {}, d.adapter_id ?? "base"), h("td", {}, d.previous_adapter_id ?? "base"),
          h("td", {}, d.reason), h("td", {}, (d.hooks || []).map(k => `${k.hook}: ${k.ok ? "ok" : "FAILED"}`).join(", ")))))
          : h("p", {class: "muted"}, "Never deployed.")));
    }
    box.replaceChildren(...sections);
  }

  await refresh();
  let deployed = "";
  onLive((name, data) => {
    if (name !== "status") return;
    const now = JSON.stringify(data.tracks);
    if (deployed && now !== deployed) refresh();
    deployed = now;
  });
}

function adapterActions(adapter, refresh) {
  const post = (path, body = {}) => () => api(`/api/adapters/${adapter.id}/${path}`, {method: "POST", body: JSON.stringify(body)})
    .then(r => { refresh(); return {message: r.track ? `track ${r.track}: ${r.name || "bare base"} is live${r.hooks_ok === false ? " (a hook FAILED)" : ""}` : `adapter ${r.id}: ${r.state}`}; });
  if (adapter.state === "awaiting_approval") return [actionButton("Approve", post("approve")), actionButton("Reject", post("reject"), {kind: "danger"})];
  if (adapter.state === "candidate" && adapter.verdict && adapter.verdict.passed) return [actionButton("Deploy", post("deploy"))];
  if (["candidate", "rejected", "retired"].includes(adapter.state)) {
    return [actionButton("Deploy", post("deploy", {force: true, reason: "forced from the monitor"}),
      {confirmText: `Adapter ${adapter.id} did not pass its gates (or was retired). Deploy it anyway?`})];
  }
  return [];
}

// --- datasets ---------------------------------------------------------------------

async function datasetsPage(view) {
  const listBox = h("div", {});
  const rejectedBox = h("div", {});
  const detail = h("div", {id: "dataset-detail"});
  const file = h("input", {type: "file", accept: ".jsonl,application/jsonl"});
  const track = h("select", {});
  const queue = h("input", {type: "checkbox", checked: true});
  const upload = actionButton("Upload", async () => {
    if (!file.files.length) throw new Error("choose a JSONL file first");
    const f = file.files[0];
    const answer = await api(`/api/datasets?name=${encodeURIComponent(f.name)}&track=${encodeURIComponent(track.value)}&queue=${queue.checked}`,
      {method: "POST", body: f, headers: {"Content-Type": "application/octet-stream"}});
    refresh();
    return answer;
  });
  view.append(h("h1", {}, "Datasets"),
    section("Add a dataset", h("p", {}, file, " track ", track, " ", h("label", {}, queue, " queue a job"), " ", upload)),
    section("Ingested", listBox, detail), section("Rejected by the inbox", rejectedBox));

  async function show(id) {
    const d = await api(`/api/datasets/${id}`);
    const r = d.report || {};
    const issues = (r.errors || []).map(e => h("tr", {}, h("td", {}, e.line), h("td", {}, e.reason)));
    detail.replaceChildren(h("h3", {}, `Dataset ${d.id}: ${d.name}`),
      h("p", {}, `${d.n_records} records, ${d.n_rejected} bad lines kept aside, mode ${d.mode}, sha256 ${d.file_hash.slice(0, 16)}…`),
      issues.length ? table(["line", "reason"], issues) : h("p", {class: "muted"}, "No bad lines."));
  }

  async function refresh() {
    const [datasets, rejected, tracks] = await Promise.all([api("/api/datasets"), api("/api/datasets/rejected"), api("/api/tracks")]);
    if (!track.options.length) tracks.forEach(t => track.append(h("option", {value: t.name}, t.name)));
    listBox.replaceChildren(datasets.length ? table(["id", "name", "track", "records", "bad lines", "mode", "added"], datasets.map(d =>
      h("tr", {class: "clickable", dataset: {dataset: d.id}, onclick: () => show(d.id)}, h("td", {}, d.id), h("td", {}, d.name), h("td", {}, d.track),
        h("td", {}, d.n_records), h("td", {class: d.n_rejected ? "danger" : ""}, d.n_rejected), h("td", {}, d.mode), h("td", {}, when(d.created_at)))))
      : h("p", {class: "muted"}, "Nothing ingested yet: drop JSONL into the inbox, or upload it here."));
    rejectedBox.replaceChildren(rejected.length ? h("div", {}, rejected.map(r => h("details", {}, h("summary", {}, `${r.file} (${when(r.at)})`), h("pre", {}, r.errors))))
      : h("p", {class: "muted"}, "No rejected files."));
  }

  await refresh();
  onLive(name => { if (name === "event") { clearTimeout(datasetsPage.t); datasetsPage.t = setTimeout(refresh, 500); } });
}

// --- start --------------------------------------------------------------------------

async function start() {
  const view = document.getElementById("view");
  const path = location.pathname;
  const job = path.match(/^\/jobs\/(\d+)$/);
  const page = job ? "job" : ({"/": "overview", "/adapters": "adapters", "/datasets": "datasets"}[path] || "overview");
  document.querySelectorAll("[data-nav]").forEach(a => a.classList.toggle("active", a.dataset.nav === page));
  document.body.dataset.page = page;
  connectLive();
  try {
    if (job) await jobPage(view, Number(job[1]));
    else if (page === "adapters") await adaptersPage(view);
    else if (page === "datasets") await datasetsPage(view);
    else await overview(view);
    document.body.dataset.ready = "true";
  } catch (err) {
    view.append(h("pre", {class: "error"}, err.message));
  }
}

start();
