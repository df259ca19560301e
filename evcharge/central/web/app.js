// Central's operator dashboard: live CP tiles from GET /events, operator actions, session history.
// Energy and money arrive as integers (wh, micro_eur, power_w, price in micro-EUR/kWh) and are
// formatted with integer arithmetic only. Events are applied to plain state at once; the DOM is
// brought up to date once per animation frame, touching only the tiles and rows that changed.

const STATUSES = ["ON", "SUPPLYING", "STOPPED", "BROKEN", "DISCONNECTED"];
const TOKEN_KEY = "evcharge.operator_token";
const MAX_MESSAGES = 200;
const MAX_ONGOING_ROWS = 100; // more than that are on the tiles; a longer table only costs layout
const QUIET_CHECK_MS = 30000; // no event for this long: ask /health whether central is still there
const END_REASONS = {
  driver: "driver", operator: "operator", unplugged: "unplugged", completed: "completed",
  fault: "CP fault", cannot_record: "could not record", engine_failure: "engine failure",
  interrupted: "interrupted", not_started: "never started",
};

// ---- formatting (integers in, strings out)

/** `value` counts units of 10^-scale; the result has `decimals` digits, rounded half away from zero. */
export function fixed(value, scale, decimals) {
  if (!Number.isInteger(value)) return "–";
  let n = BigInt(value);
  const negative = n < 0n;
  if (negative) n = -n;
  const drop = scale - decimals;
  if (drop > 0) {
    const unit = 10n ** BigInt(drop);
    n = (n + unit / 2n) / unit;
  } else if (drop < 0) {
    n *= 10n ** BigInt(-drop);
  }
  const digits = n.toString().padStart(decimals + 1, "0");
  const whole = digits.slice(0, digits.length - decimals);
  const frac = decimals ? "." + digits.slice(digits.length - decimals) : "";
  return (negative && n !== 0n ? "-" : "") + whole + frac;
}
export const kwh = (wh) => fixed(wh, 3, 3);
export const eur = (microEur, decimals = 2) => fixed(microEur, 6, decimals);
export const kw = (watts) => fixed(watts, 3, 1);
/** A price in micro-EUR/kWh: at least 2 decimals, more only when the price has them. */
export const price = (micro) => fixed(micro, 6, 6).replace(/0{1,4}$/, "");

const pad2 = (n) => String(n).padStart(2, "0");
function clock(unixS) {
  if (unixS == null) return "";
  const d = new Date(unixS * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}
function stamp(unixS) {
  if (unixS == null) return "";
  const d = new Date(unixS * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(unixS)}`;
}
const byId = new Intl.Collator(undefined, { numeric: true }).compare;
const $ = (id) => document.getElementById(id);
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// ---- state: what central told us; the DOM follows it

const state = {
  cps: new Map(), // cp_id -> CP
  sessions: new Map(), // session_id -> active SESSION
  sessionOnCp: new Map(), // cp_id -> session_id of its active session
  sortedIds: [],
  view: [], // cp ids that pass the filter, sorted
  viewSet: new Set(),
  shown: [], // cp ids whose tiles are in the grid now
  filter: { text: "", status: null },
  page: 0,
  pageSize: 120,
  auth: false,
  role: null,
  instance: null,
  live: false,
  lastEventAt: 0,
};
const dirty = { cps: new Set(), sessions: new Set(), membership: true, view: true, ongoing: true };
const pendingMessages = [];
let frame = 0;

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

const activeSession = (cp) => (cp.session && cp.session.state !== "ended" ? cp.session : null);

function applySnapshot(snap) {
  state.cps = new Map(snap.charging_points.map((cp) => [cp.cp_id, cp]));
  state.sessions.clear();
  state.sessionOnCp.clear();
  for (const s of snap.sessions) if (s.state !== "ended") putSession(s);
  state.role = snap.role ?? state.role;
  state.instance = snap.instance ?? state.instance;
  tiles.clear();
  state.shown = [];
  dirty.membership = dirty.view = dirty.ongoing = true;
  ongoingRows.clear();
  $("ongoing-body").replaceChildren();
  $("messages").replaceChildren();
  pendingMessages.length = 0;
  pendingMessages.push(...snap.messages);
  showConnection("live");
  refreshHealth();
  history.load($("history-form")); // sessions may have ended while the stream was down
}

function applyCp(cp) {
  const old = state.cps.get(cp.cp_id);
  state.cps.set(cp.cp_id, cp);
  if (!old) dirty.membership = true;
  else if (old.status !== cp.status || old.location !== cp.location) dirty.view = true;
  dirty.cps.add(cp.cp_id);
  const s = activeSession(cp);
  const previous = state.sessionOnCp.get(cp.cp_id);
  if (previous && previous !== s?.session_id) dropSession(previous);
  if (s) putSession(s);
}

function putSession(s) {
  if (!state.sessions.has(s.session_id)) dirty.ongoing = true;
  state.sessions.set(s.session_id, s);
  state.sessionOnCp.set(s.cp_id, s.session_id);
  dirty.sessions.add(s.session_id);
}

function dropSession(id) {
  const s = state.sessions.get(id);
  if (!s) return;
  state.sessions.delete(id);
  if (state.sessionOnCp.get(s.cp_id) === id) state.sessionOnCp.delete(s.cp_id);
  dirty.ongoing = true;
}

function applyRemoved({ cp_id }) {
  state.cps.delete(cp_id);
  tiles.delete(cp_id);
  const session = state.sessionOnCp.get(cp_id);
  if (session) dropSession(session);
  dirty.membership = true;
}

function applySessionEnded(session) {
  dropSession(session.session_id);
  history.offer(session);
}

// ---- tiles

const tiles = new Map(); // cp_id -> {el, parts}
const template = () => $("tile-template").content.firstElementChild;

function tileFor(id) {
  let tile = tiles.get(id);
  if (!tile) {
    const el = template().cloneNode(true);
    el.dataset.cpId = id;
    const parts = {};
    for (const part of el.querySelectorAll("[data-testid]")) parts[part.dataset.testid] = part;
    tile = { el, parts };
    tiles.set(id, tile);
    drawTile(tile, state.cps.get(id));
  }
  return tile.el;
}

function idleDetail(cp) {
  switch (cp.status) {
    case "BROKEN": return cp.detail || (cp.engine_health === "KO" ? "engine KO" : "health not known yet");
    case "DISCONNECTED": return cp.detail || "monitor not connected";
    case "STOPPED": return cp.detail || "stopped by the operator";
    case "ON": return cp.detail || `up to ${kw(cp.max_w)} kW`;
    default: return cp.detail || "";
  }
}

function drawTile({ el, parts }, cp) {
  const s = activeSession(cp);
  if (el.dataset.status !== cp.status) {
    el.dataset.status = cp.status;
    el.className = `tile st-${cp.status}`;
  }
  setText(parts["cp-id"], cp.cp_id);
  setText(parts["cp-price"], `${price(cp.price)} EUR/kWh`);
  let headline = cp.status;
  if (cp.status === "STOPPED") headline += " · Out of order";
  else if (cp.status === "SUPPLYING" && s?.state === "supplying") headline += ` ${kw(s.power_w)} kW`;
  else if (cp.status === "ON") headline += " · available";
  setText(parts["cp-status"], headline);
  setText(parts["cp-location"], cp.location);
  setText(parts["cp-driver"], s ? s.driver_id : "");
  setText(parts["cp-detail"], s ? (s.state === "authorised" ? "authorised, starting…" : "") : idleDetail(cp));
  parts["cp-meter"].hidden = !s || s.state !== "supplying";
  if (s) {
    setText(parts["cp-kwh"], kwh(s.wh));
    setText(parts["cp-eur"], eur(s.micro_eur));
  }
  parts["cp-stop"].hidden = cp.stopped;
  parts["cp-resume"].hidden = !cp.stopped;
  parts["cp-forget"].hidden = cp.status !== "DISCONNECTED";
}

function matches(cp, text) {
  if (state.filter.status && cp.status !== state.filter.status) return false;
  if (!text) return true;
  return `${cp.cp_id}\n${cp.location}\n${cp.status}`.toLowerCase().includes(text);
}

function renderGrid() {
  if (dirty.membership) state.sortedIds = [...state.cps.keys()].sort(byId);
  if (dirty.membership || dirty.view) {
    const text = state.filter.text.trim().toLowerCase();
    state.view = state.sortedIds.filter((id) => matches(state.cps.get(id), text));
    state.viewSet = new Set(state.view);
    dirty.ongoing = true;
    renderCounters();
  }
  const pages = Math.max(1, Math.ceil(state.view.length / state.pageSize));
  state.page = Math.min(state.page, pages - 1);
  const from = state.page * state.pageSize;
  const ids = state.view.slice(from, from + state.pageSize);
  const same = ids.length === state.shown.length && ids.every((id, i) => id === state.shown[i]);
  if (!same) {
    $("cp-grid").replaceChildren(...ids.map(tileFor));
    state.shown = ids;
  }
  for (const id of dirty.cps) {
    const tile = tiles.get(id);
    if (tile && state.cps.has(id)) drawTile(tile, state.cps.get(id));
  }
  const empty = $("cp-empty");
  empty.hidden = ids.length > 0;
  setText(empty, state.cps.size ? "No charging point matches the filter." :
    "No charging points yet: a monitor registers its CP when it connects.");
  setText($("pager-info"), state.view.length
    ? `${from + 1}–${from + ids.length} of ${state.view.length}` +
      (state.view.length < state.cps.size ? ` (filtered from ${state.cps.size})` : "") + ` · page ${state.page + 1}/${pages}`
    : "");
  $("pager-prev").disabled = state.page === 0;
  $("pager-next").disabled = state.page >= pages - 1;
}

function renderCounters() {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const cp of state.cps.values()) counts[cp.status] = (counts[cp.status] ?? 0) + 1;
  for (const button of $("counters").querySelectorAll("button[data-status]")) {
    const status = button.dataset.status;
    setText(button.querySelector("b"), String(counts[status]));
    button.setAttribute("aria-pressed", String(state.filter.status === status));
  }
}

// ---- ongoing requests and messages

const ongoingRows = new Map(); // session_id -> {tr, cells}

function renderOngoing() {
  const body = $("ongoing-body");
  if (dirty.ongoing) {
    const order = [...state.sessions.values()].filter((s) => state.viewSet.has(s.cp_id))
      .sort((a, b) => a.created_at - b.created_at);
    const shown = order.slice(0, MAX_ONGOING_ROWS);
    const keep = new Set(shown.map((s) => s.session_id));
    for (const id of ongoingRows.keys()) if (!keep.has(id)) ongoingRows.delete(id);
    const rows = shown.map((s) => {
      let row = ongoingRows.get(s.session_id);
      if (!row) {
        row = makeRow(7, "session-row");
        row.tr.dataset.sessionId = s.session_id;
        ongoingRows.set(s.session_id, row);
        dirty.sessions.add(s.session_id);
      }
      return row.tr;
    });
    if (!rows.length) rows.push(placeholderRow(7, state.sessions.size ? "none matches the filter" : "none"));
    const inOrder = rows.length === body.children.length && rows.every((tr, i) => body.children[i] === tr);
    if (!inOrder) body.replaceChildren(...rows);
    const filtered = order.length < state.sessions.size ? ` of ${state.sessions.size}, filtered like the tiles` : "";
    const more = order.length > shown.length ? `; the oldest ${shown.length} shown` : "";
    setText($("ongoing-count"), `(${order.length}${filtered}${more})`);
  }
  for (const id of dirty.sessions) {
    const s = state.sessions.get(id);
    const row = ongoingRows.get(id);
    if (!s || !row) continue;
    const values = [clock(s.started_at ?? s.created_at), s.driver_id, s.cp_id, s.state,
      kw(s.power_w), kwh(s.wh), eur(s.micro_eur)];
    values.forEach((v, i) => setText(row.cells[i], v));
    row.tr.dataset.state = s.state;
  }
}

function makeRow(columns, testid) {
  const tr = document.createElement("tr");
  tr.dataset.testid = testid;
  const cells = [];
  for (let i = 0; i < columns; i++) cells.push(tr.insertCell());
  for (const i of columns === 7 ? [4, 5, 6] : [5, 6]) cells[i].className = "num";
  return { tr, cells };
}

function placeholderRow(columns, text) {
  const tr = document.createElement("tr");
  const td = tr.insertCell();
  td.colSpan = columns;
  td.className = "dim";
  td.textContent = text;
  return tr;
}

function renderMessages() {
  const list = $("messages");
  for (const m of pendingMessages.splice(0)) {
    const li = document.createElement("li");
    li.className = `msg-${m.level}`;
    li.dataset.testid = "message";
    const at = document.createElement("time");
    at.textContent = clock(m.at);
    li.append(at, " ", m.text);
    list.prepend(li);
  }
  while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
}

function render() {
  frame = 0;
  renderGrid();
  renderOngoing();
  renderMessages();
  setText($("totals"), `${state.cps.size} CPs · ${state.sessions.size} active`);
  dirty.cps.clear();
  dirty.sessions.clear();
  dirty.membership = dirty.view = dirty.ongoing = false;
}

// ---- session history

const history = {
  query: {},
  rows: new Map(), // session_id -> tr

  async load(form) {
    const data = new FormData(form);
    const query = {};
    for (const key of ["driver_id", "cp_id", "limit"]) {
      const value = String(data.get(key) ?? "").trim();
      if (value) query[key] = value;
    }
    for (const key of ["since", "until"]) {
      const value = String(data.get(key) ?? "");
      if (value) query[key] = String(Math.floor(new Date(value).getTime() / 1000));
    }
    this.query = query;
    setText($("history-status"), "loading…");
    const response = await request("GET", `/sessions?${new URLSearchParams(query)}`, "Session history");
    if (!response?.ok) return setText($("history-status"), "failed");
    const { sessions } = await response.json();
    this.rows.clear();
    $("history-body").replaceChildren(...sessions.map((s) => this.row(s)));
    if (!sessions.length) $("history-body").append(placeholderRow(9, "no sessions"));
    setText($("history-status"), `${sessions.length} session${sessions.length === 1 ? "" : "s"}`);
  },

  row(s) {
    const { tr, cells } = makeRow(9, "history-row");
    tr.dataset.sessionId = s.session_id;
    tr.dataset.revision = String(s.ticket_revision ?? 0);
    const ticket = s.provisional ? "provisional" : s.ticket_revision ? `revision ${s.ticket_revision}` : "original";
    const values = [s.session_id, s.cp_id, s.driver_id, stamp(s.started_at ?? s.created_at), stamp(s.ended_at),
      kwh(s.wh), eur(s.micro_eur, 4), END_REASONS[s.end_reason] ?? s.end_reason ?? "", ticket];
    values.forEach((v, i) => { cells[i].textContent = v; });
    cells[7].dataset.reason = s.end_reason ?? "";
    if (s.ticket_revision || s.provisional) cells[8].className = "revised";
    this.rows.set(s.session_id, tr);
    return tr;
  },

  /** A session that ended while the page is open: shown at the top if it fits the current filters. */
  offer(s) {
    const q = this.query;
    if (q.until || (q.driver_id && q.driver_id !== s.driver_id) || (q.cp_id && q.cp_id !== s.cp_id)) return;
    if (q.since && (s.started_at ?? s.created_at) < Number(q.since)) return;
    const body = $("history-body");
    const old = this.rows.get(s.session_id);
    const tr = this.row(s);
    if (old) return old.replaceWith(tr);
    if (body.firstElementChild && !body.firstElementChild.dataset.sessionId) body.replaceChildren();
    body.prepend(tr);
    while (body.children.length > Number(q.limit ?? 100)) {
      this.rows.delete(body.lastElementChild.dataset.sessionId);
      body.lastElementChild.remove();
    }
  },
};

// ---- talking to central: operator actions, token, refusals

function toast(text, kind = "error") {
  const box = $("toasts");
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.dataset.testid = kind === "error" ? "error-toast" : "ok-toast";
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "×";
  close.setAttribute("aria-label", "Dismiss");
  close.addEventListener("click", () => el.remove());
  el.append(text, close);
  box.append(el);
  while (box.children.length > 5) box.firstElementChild.remove();
  if (kind !== "error") setTimeout(() => el.remove(), 4000);
}

/** fetch, with every refusal and network failure shown to the operator; the Response when it is 2xx. */
async function request(method, path, label, token) {
  let response;
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    response = await fetch(path, { method, headers, signal: AbortSignal.timeout(10000) });
  } catch (err) {
    toast(`${label}: central did not answer (${err.message})`);
    return null;
  }
  if (response.ok) return response;
  let error = "", message = "";
  try {
    ({ error = "", message = "" } = await response.json());
  } catch {
    message = response.statusText;
  }
  const why = { 401: "wrong or missing operator token", 404: "not found", 409: "refused" }[response.status] ?? "failed";
  toast(`${label}: ${response.status} ${why}${error ? ` (${error})` : ""}${message ? ` — ${message}` : ""}`);
  response.refusal = message || why;
  return response.status === 401 ? response : null;
}

let tokenWaiter = null;

function askToken(reason) {
  $("token-reason").textContent = reason;
  $("token-input").value = "";
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
  $("token-input").focus();
  tokenWaiter?.(null);
  return new Promise((resolve) => { tokenWaiter = resolve; });
}

function answerToken(token) {
  $("token-dialog").close();
  const waiter = tokenWaiter;
  tokenWaiter = null;
  waiter?.(token);
}

async function operate(method, path, label) {
  let reason = `${label} needs the operator token.`;
  for (;;) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (state.auth && !token) {
      token = await askToken(reason);
      if (token === null) return;
      sessionStorage.setItem(TOKEN_KEY, token);
    }
    const response = await request(method, path, label, token);
    if (!response) return;
    if (response.ok) return toast(`${label}: done`, "ok");
    sessionStorage.removeItem(TOKEN_KEY); // 401: this token is wrong, ask for another
    state.auth = true;
    reason = `Refused (401): ${response.refusal}. Enter the right operator token for ${label}.`;
  }
}

async function refreshHealth() {
  try {
    const response = await fetch("/health", { signal: AbortSignal.timeout(3000) });
    const health = await response.json();
    state.auth = Boolean(health.auth);
    state.role = health.role ?? state.role;
    state.instance = health.instance ?? state.instance;
  } catch {
    return false;
  } finally {
    const role = $("role");
    setText(role, [state.role, state.instance].filter(Boolean).join(" · ") + (state.auth ? " · auth on" : ""));
    role.dataset.role = state.role ?? "";
  }
  return true;
}

// ---- the live stream: one snapshot per connect, then events; our own backoff on every break

let source = null;
let retryTimer = 0;
let retryDelayMs = 0;

function nextRetryDelayMs() {
  retryDelayMs = retryDelayMs ? Math.min(retryDelayMs * 2, 10000) : 250 + Math.random() * 250;
  return retryDelayMs;
}

function connect() {
  clearTimeout(retryTimer);
  source?.close();
  source = new EventSource("/events");
  const on = (name, apply) => source.addEventListener(name, (event) => {
    state.lastEventAt = Date.now();
    try {
      apply(JSON.parse(event.data));
    } catch (err) {
      toast(`central sent a ${name} event this page cannot use (${err.message})`);
    }
    schedule();
  });
  on("snapshot", (snap) => { retryDelayMs = 0; applySnapshot(snap); });
  on("cp", applyCp);
  on("cp_removed", applyRemoved);
  on("session_ended", applySessionEnded);
  on("message", (m) => {
    pendingMessages.push(m);
    if (pendingMessages.length > MAX_MESSAGES) pendingMessages.shift();
  });
  source.addEventListener("open", () => { state.lastEventAt = Date.now(); });
  source.addEventListener("error", () => broken("the stream from central broke"));
}

function broken(why) {
  source?.close();
  source = null;
  const delay = nextRetryDelayMs();
  const shown = state.lastEventAt ? ` What you see is as of ${clock(state.lastEventAt / 1000)}.` : "";
  showConnection("disconnected", `Disconnected from central: ${why}; reconnecting in ${(delay / 1000).toFixed(1)} s.${shown}`);
  retryTimer = setTimeout(connect, delay);
}

/** kind: "connecting" (never had a snapshot), "live", or "disconnected" (the stream broke). */
function showConnection(kind, text = "") {
  state.live = kind === "live";
  document.body.classList.toggle("offline", !state.live);
  const banner = $("conn-banner");
  banner.dataset.state = kind;
  banner.hidden = state.live;
  if (text) banner.textContent = text;
}

// Server pings are SSE comments, which EventSource never shows to a page: a quiet stream is
// checked against /health so a half-open connection is noticed instead of trusted forever.
setInterval(async () => {
  if (!state.live || Date.now() - state.lastEventAt < QUIET_CHECK_MS) return;
  state.lastEventAt = Date.now(); // the next check comes after another quiet period
  if (!(await refreshHealth())) broken("central stopped answering");
}, 5000);

// ---- wiring

function armConfirm(button, label, action) {
  button.addEventListener("click", () => {
    if (button.dataset.confirm !== "yes") {
      button.dataset.confirm = "yes";
      button.textContent = `Confirm: ${label} (${state.cps.size} CPs)`;
      setTimeout(() => { delete button.dataset.confirm; button.textContent = label; }, 4000);
      return;
    }
    delete button.dataset.confirm;
    button.textContent = label;
    action();
  });
}

function wire() {
  $("cp-grid").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const id = button.closest("[data-cp-id]").dataset.cpId;
    const path = `/cp/${encodeURIComponent(id)}`;
    const { action } = button.dataset;
    if (action === "forget") operate("DELETE", path, `Forget ${id}`);
    else operate("POST", `${path}/${action}`, `${action === "stop" ? "Stop" : "Resume"} ${id}`);
  });
  armConfirm($("stop-all"), "Stop all", () => operate("POST", "/cp/stop-all", "Stop all"));
  armConfirm($("resume-all"), "Resume all", () => operate("POST", "/cp/resume-all", "Resume all"));

  let typing = 0;
  $("cp-search").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.filter.text = event.target.value;
      state.page = 0;
      dirty.view = true;
      schedule();
    }, 120);
  });
  $("counters").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-status]");
    if (!button) return;
    state.filter.status = state.filter.status === button.dataset.status ? null : button.dataset.status;
    state.page = 0;
    dirty.view = true;
    schedule();
  });
  const turn = (delta) => { state.page = Math.max(0, state.page + delta); schedule(); };
  $("pager-prev").addEventListener("click", () => turn(-1));
  $("pager-next").addEventListener("click", () => turn(1));
  $("page-size").addEventListener("change", (event) => {
    state.pageSize = Number(event.target.value);
    state.page = 0;
    schedule();
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    answerToken($("token-input").value.trim() || null);
  });
  $("token-cancel").addEventListener("click", () => answerToken(null));
  $("token-dialog").addEventListener("cancel", () => answerToken(null));
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    answerToken(null);
    toast("Operator token forgotten", "ok");
  });
  $("token-button").addEventListener("click", async () => {
    const token = await askToken("The token is kept in this tab only (sessionStorage).");
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
  });

  $("history-form").addEventListener("submit", (event) => {
    event.preventDefault();
    history.load(event.target);
  });
}

wire();
showConnection("connecting", "Connecting to central…");
refreshHealth();
connect();
