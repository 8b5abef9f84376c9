// The kvs page: a live table of the store's entries.
//
// On load (and on every `ready` or `resync` event) it reads all entries from
// /status, page by page; then it applies the `change` and `delete` events of
// /events to the table as they come. /events is read with fetch() rather than
// EventSource, so that the bearer token (if the gateway has one) travels in
// the Authorization header like on every other call. The token comes from
// `?token=` on the first visit (kept in sessionStorage, removed from the
// address bar) or from the form shown after a 401.
//
// Keys and values are bytes: the API sends those that are UTF-8 as `key` /
// `value` strings and any others as `key_base64` / `value_base64`. The table
// shows text as it is and a binary value as its size; a `change` event of a
// large value carries only its size (`value_bytes`), and the page reads the
// value with /get. Binary values cannot be edited from the page.
//
// Each entry's expiry (`expires_ms`) shows as the time left, counted down
// once a second; the `expire` event removes the row when the server
// removes the key. Two charts draw the last ten minutes of /stats
// (requests the server answered per second, and memory used against the
// limit), polled every two seconds for what is new.
'use strict';

const TOKEN_KEY = 'kvs_http_token';
const $ = (id) => document.getElementById(id);

const state = {
  entries: new Map(), // id -> entry (see normalize)
  rows: new Map(), // id -> <tr>
  version: 0,
  maxEntries: null,
  events: null, // AbortController of the /events request
  retry: 1000,
};

// ---- token ----

function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get('token');
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// ---- messages ----

function showError(message) {
  $('error-text').textContent = message;
  $('error').hidden = false;
  $('notice').hidden = true;
}

function clearError() {
  $('error').hidden = true;
}

let noticeTimer = null;
function showNotice(message) {
  clearError();
  $('notice').textContent = message;
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { $('notice').hidden = true; }, 3000);
}

function setLive(on, text) {
  $('live').textContent = text;
  $('live').className = on ? 'on' : 'off';
}

// ---- API ----

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { ...authHeaders() } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `the gateway is not reachable (${e.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : response.statusText;
    if (response.status === 401) {
      $('token-form').hidden = false;
    }
    throw new ApiError(response.status, `${response.status}: ${message}`);
  }
  return data;
}

const enc = encodeURIComponent;

// ---- entries ----

// The id of a key in the maps: text and base64 keys cannot collide.
function keyId(key, keyBase64) {
  return key !== undefined && key !== null ? `t:${key}` : `b:${keyBase64}`;
}

function base64Bytes(b64) {
  const pad = b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0;
  return Math.floor((b64.length * 3) / 4) - pad;
}

// An entry or event of the API as the page keeps it: `key` (text, or null
// for a binary key, then `keyBase64`), `label` (what the table shows),
// `value` (text, or null: then `valueBase64`, or neither when the value
// was too large for an event), `valueBytes`.
function normalize(e) {
  const textKey = typeof e.key === 'string';
  const entry = {
    id: keyId(e.key, e.key_base64),
    key: textKey ? e.key : null,
    keyBase64: textKey ? null : e.key_base64,
    label: textKey ? e.key : `base64:${e.key_base64}`,
    value: typeof e.value === 'string' ? e.value : null,
    valueBase64: typeof e.value_base64 === 'string' ? e.value_base64 : null,
    version: e.version,
    modified_ms: e.modified_ms,
    expires_ms: typeof e.expires_ms === 'number' ? e.expires_ms : null,
  };
  if (entry.value !== null) entry.valueBytes = new TextEncoder().encode(entry.value).length;
  else if (entry.valueBase64 !== null) entry.valueBytes = base64Bytes(entry.valueBase64);
  else entry.valueBytes = e.value_bytes || 0;
  entry.complete = entry.value !== null || entry.valueBase64 !== null;
  return entry;
}

// The path of an API call on one key: `get/KEY`, or `get?key_base64=B`.
function keyPath(call, entry) {
  return entry.key !== null ? `${call}/${enc(entry.key)}` : `${call}?key_base64=${enc(entry.keyBase64)}`;
}

const SHOWN_CHARS = 300;

function formatBytes(n) {
  if (n >= 1048576 && n % 1048576 === 0) return `${n / 1048576} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

function displayValue(entry) {
  if (entry.value !== null) {
    if (entry.value.length <= SHOWN_CHARS) return entry.value;
    return `${entry.value.slice(0, SHOWN_CHARS)}… (${entry.valueBytes} bytes)`;
  }
  if (entry.valueBase64 !== null) return `(${entry.valueBytes} bytes of binary)`;
  return `(${entry.valueBytes} bytes, loading…)`;
}

// ---- table ----

function pad(n, w = 2) {
  return String(n).padStart(w, '0');
}

function formatTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function matches(entry, filter) {
  if (!filter) return true;
  return entry.label.toLowerCase().includes(filter)
    || (entry.value !== null && entry.value.toLowerCase().includes(filter));
}

function sortKey(entry) {
  // Text keys first, then binary ones.
  return (entry.key !== null ? '0' : '1') + entry.label;
}

// "in 42 s", "in 3 min 5 s", "in 2 h 10 min", "in 4 d 2 h": the time left.
function formatLeft(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  if (s < 60) return `in ${s} s`;
  if (s < 3600) return `in ${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `in ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `in ${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function fillExpiry(td, entry, now) {
  if (entry.expires_ms === null) {
    td.textContent = '—';
    td.title = 'never expires';
    td.classList.remove('soon');
    return;
  }
  const left = entry.expires_ms - now;
  td.textContent = formatLeft(left);
  td.title = new Date(entry.expires_ms).toISOString();
  td.classList.toggle('soon', left < 10000);
}

// Counts every expiring row down (the server removes the key and its
// `expire` event removes the row).
function tickExpiries() {
  const now = Date.now();
  for (const [id, tr] of state.rows) {
    const entry = state.entries.get(id);
    if (entry && entry.expires_ms !== null) fillExpiry(tr.children[4], entry, now);
  }
}

function fillRow(tr, entry) {
  const [key, value, version, time, expires] = tr.children;
  fillExpiry(expires, entry, Date.now());
  key.textContent = entry.label;
  value.textContent = displayValue(entry);
  value.classList.toggle('binary', entry.value === null);
  version.textContent = entry.version;
  time.textContent = formatTime(entry.modified_ms);
  time.title = entry.modified_ms ? new Date(entry.modified_ms).toISOString() : '';
  tr.hidden = !matches(entry, currentFilter());
}

function makeRow(entry) {
  const tr = document.createElement('tr');
  tr.dataset.id = entry.id;
  tr.dataset.sort = sortKey(entry);
  if (entry.key !== null) tr.dataset.key = entry.key;
  else tr.dataset.keyBase64 = entry.keyBase64;
  for (const cls of ['key', 'value', 'num', 'time', 'expires']) {
    const td = document.createElement('td');
    td.className = cls;
    tr.appendChild(td);
  }
  const actions = document.createElement('td');
  const del = document.createElement('button');
  del.type = 'button';
  del.className = 'link';
  del.textContent = 'delete';
  del.title = `Delete ${entry.label}`;
  del.addEventListener('click', (ev) => {
    ev.stopPropagation();
    const e = state.entries.get(tr.dataset.id);
    if (e) removeKey(e);
  });
  actions.appendChild(del);
  tr.appendChild(actions);
  tr.addEventListener('click', () => {
    const e = state.entries.get(tr.dataset.id);
    if (!e) return;
    if (e.key === null) {
      showNotice('This key is binary: it cannot be edited here (delete it with its row\'s button).');
      return;
    }
    $('key').value = e.key;
    if (e.value !== null) {
      $('value').value = e.value;
    } else {
      $('value').value = '';
      showNotice(`The value of ${e.key} is binary: it cannot be edited here.`);
    }
  });
  fillRow(tr, entry);
  return tr;
}

function currentFilter() {
  return $('search').value.trim().toLowerCase();
}

function updateCounts() {
  $('version').textContent = state.version;
  const count = state.entries.size;
  $('count').textContent = state.maxEntries ? `${count} / ${state.maxEntries}` : String(count);
  let shown = 0;
  for (const tr of state.rows.values()) if (!tr.hidden) shown += 1;
  const filter = currentFilter();
  $('shown').textContent = filter ? `${shown} of ${count} shown` : '';
  $('empty').hidden = shown > 0;
}

// Inserts or updates one entry, keeping rows sorted by key. An event older
// than what the table shows is ignored.
function upsert(entry, flash) {
  const known = state.entries.get(entry.id);
  if (known && known.version > entry.version) return;
  state.entries.set(entry.id, entry);
  state.version = Math.max(state.version, entry.version);
  let tr = state.rows.get(entry.id);
  if (tr) {
    fillRow(tr, entry);
  } else {
    tr = makeRow(entry);
    state.rows.set(entry.id, tr);
    const tbody = $('entries').tBodies[0];
    const sort = sortKey(entry);
    let before = null;
    for (const row of tbody.rows) {
      if (row.dataset.sort > sort) { before = row; break; }
    }
    tbody.insertBefore(tr, before);
  }
  if (flash) {
    tr.classList.remove('flash');
    void tr.offsetWidth; // restart the animation
    tr.classList.add('flash');
  }
  updateCounts();
}

function remove(id, version) {
  const known = state.entries.get(id);
  if (known && version !== undefined && known.version > version) return;
  state.entries.delete(id);
  const tr = state.rows.get(id);
  if (tr) tr.remove();
  state.rows.delete(id);
  if (version !== undefined) state.version = Math.max(state.version, version);
  updateCounts();
}

function applyFilter() {
  const filter = currentFilter();
  for (const [id, tr] of state.rows) tr.hidden = !matches(state.entries.get(id), filter);
  updateCounts();
}

// Reads every entry from /status and replaces the table. A call while a
// load is running queues one more load after it (the running one may have
// read the store before the event that asked for a reload).
let loading = null;
let loadAgain = false;
async function loadAll() {
  if (loading) {
    loadAgain = true;
    return loading;
  }
  loading = (async () => {
    do {
      loadAgain = false;
      await loadOnce();
    } while (loadAgain);
  })();
  try {
    await loading;
  } finally {
    loading = null;
  }
}

async function loadOnce() {
  const entries = new Map();
  let cursor = null;
  let first = null;
  do {
    const query = cursor ? `?limit=1000&cursor=${enc(cursor)}` : '?limit=1000';
    const page = await api('GET', `status${query}`);
    if (!first) first = page;
    for (const e of page.entries) {
      const entry = normalize(e);
      entries.set(entry.id, entry);
    }
    cursor = page.next_cursor;
  } while (cursor);
  $('region').textContent = first.region;
  $('value-limit').textContent = formatBytes(first.limits.value_max_bytes);
  $('value').maxLength = first.limits.value_max_bytes;
  $('key').maxLength = first.limits.key_max_bytes;
  state.maxEntries = first.max_entries;
  const tbody = $('entries').tBodies[0];
  tbody.replaceChildren();
  state.entries = new Map();
  state.rows = new Map();
  state.version = 0; // a restarted server starts again from 0
  const sorted = [...entries.values()].sort((a, b) => (sortKey(a) < sortKey(b) ? -1 : 1));
  for (const entry of sorted) upsert(entry, false);
  state.version = Math.max(state.version, first.version);
  updateCounts();
}

async function reload() {
  try {
    await loadAll();
    clearError();
  } catch (e) {
    showError(e.message);
  }
}

// ---- events ----

function handleEvent(name, data) {
  switch (name) {
    case 'ready':
      setLive(true, 'live');
      reload();
      break;
    case 'resync':
      setLive(true, 'live');
      reload();
      break;
    case 'change': {
      const entry = normalize(data);
      upsert(entry, true);
      // Too large for the event: read it.
      if (!entry.complete) refreshKey(entry);
      break;
    }
    case 'delete':
    case 'expire':
    case 'evict':
      // Gone the same way for the page: deleted, expired or evicted.
      remove(keyId(data.key, data.key_base64), data.version);
      break;
    case 'unavailable':
      setLive(false, 'store down');
      showError(data.error);
      break;
    default:
      break;
  }
}

// Parses a text/event-stream body: blocks separated by a blank line, with
// `event:` and `data:` lines.
async function readEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length === 0) continue; // a keep-alive comment
      let parsed = {};
      try { parsed = JSON.parse(data.join('\n')); } catch (e) { parsed = {}; }
      handleEvent(name, parsed);
    }
  }
}

async function connectEvents() {
  if (state.events) state.events.abort();
  const controller = new AbortController();
  state.events = controller;
  try {
    const response = await fetch('events', { headers: authHeaders(), signal: controller.signal });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      if (response.status === 401) $('token-form').hidden = false;
      throw new Error(`live updates: ${response.status}: ${message}`);
    }
    state.retry = 1000;
    await readEvents(response, controller.signal);
    if (!controller.signal.aborted) throw new Error('live updates: the stream ended');
  } catch (e) {
    if (controller.signal.aborted) return;
    setLive(false, 'reconnecting…');
    showError(e.message.startsWith('live updates') ? e.message : `live updates: the gateway is not reachable (${e.message})`);
  }
  if (state.events !== controller) return;
  setTimeout(() => { if (state.events === controller) connectEvents(); }, state.retry);
  state.retry = Math.min(state.retry * 2, 10000);
}

// ---- forms ----

// Reads one key (`entry`: its `key`, or `keyBase64` for a binary key) into
// the table.
async function refreshKey(entry) {
  try {
    upsert(normalize(await api('GET', keyPath('get', entry))), true);
  } catch (e) {
    if (e.status === 404) remove(keyId(entry.key, entry.keyBase64));
  }
}

async function removeKey(entry) {
  const label = entry.key !== null ? entry.key : `base64:${entry.keyBase64}`;
  try {
    await api('DELETE', keyPath('del', entry));
    remove(keyId(entry.key, entry.keyBase64));
    showNotice(`Deleted ${label}`);
  } catch (e) {
    showError(e.message);
  }
}

// A TTL as typed: "30s", "5m", "2h", "1d", "250ms" or plain seconds;
// empty: none. Milliseconds, or an Error that says what is accepted.
function parseTtl(text) {
  const t = text.trim();
  if (t === '') return null;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?$/i.exec(t);
  const unit = { ms: 1, s: 1000, m: 60000, min: 60000, h: 3600000, d: 86400000 };
  const ms = m ? Math.round(parseFloat(m[1]) * unit[(m[2] || 's').toLowerCase()]) : NaN;
  if (!(ms >= 1) || !Number.isSafeInteger(ms)) {
    throw new Error(`"${t}" is not a TTL: write 30s, 5m, 2h, 1d, or seconds (above zero)`);
  }
  return ms;
}

async function submitEdit(ev) {
  ev.preventDefault();
  const action = ev.submitter ? ev.submitter.value : 'set';
  const key = $('key').value;
  const value = $('value').value;
  const named = { key, keyBase64: null };
  try {
    if (action === 'delete') {
      await removeKey(named);
      return;
    }
    const ttl = parseTtl($('ttl').value);
    const expiry = ttl === null ? '' : ` (expires ${formatLeft(ttl)})`;
    if (action === 'insert') {
      await api('POST', 'post', { key, value });
      if (ttl !== null) await api('POST', 'expire', { key, ttl_ms: ttl });
      showNotice(`Inserted ${key}${expiry}`);
    } else {
      await api('POST', 'set', ttl === null ? { key, value } : { key, value, ttl_ms: ttl });
      showNotice(`Set ${key}${expiry}`);
    }
    // The event stream brings the change too; this keeps the table right
    // when live updates are down.
    await refreshKey(named);
  } catch (e) {
    showError(e.message);
  }
}

function start() {
  takeTokenFromUrl();
  $('edit').addEventListener('submit', submitEdit);
  $('search').addEventListener('input', applyFilter);
  $('error-close').addEventListener('click', clearError);
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value);
    $('token-form').hidden = true;
    clearError();
    connectEvents();
  });
  reload();
  connectEvents();
  setInterval(tickExpiries, 1000);
  pollStats();
  setInterval(pollStats, 2000);
}

// ---- charts ----

const SVG = 'http://www.w3.org/2000/svg';
const CHART_W = 600;
const CHART_H = 120;
const WINDOW_MS = 10 * 60 * 1000;

const charts = {
  samples: [], // the last ten minutes of /stats, oldest first
  polling: false,
};

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function formatRate(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M/s`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k/s`;
  return `${n.toFixed(n < 10 ? 1 : 0)} /s`;
}

function formatSize(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

// Draws `value(sample)` over the last ten minutes into `svg`: a line (and
// the area under it) that breaks where a sample has no value or samples
// are missing (the store was not reachable), scaled to the largest value
// shown (or `limit`, drawn dashed, when it is near).
function drawChart(svg, value, format, limit) {
  const now = Date.now();
  const shown = charts.samples.filter((s) => s.t_ms >= now - WINDOW_MS);
  let top = 0;
  for (const s of shown) { const v = value(s); if (v !== null) top = Math.max(top, v); }
  const showLimit = limit !== null && limit > 0 && top >= limit / 4;
  if (showLimit) top = Math.max(top, limit);
  top = top > 0 ? top * 1.1 : 1;
  const x = (t) => ((t - (now - WINDOW_MS)) / WINDOW_MS) * CHART_W;
  const y = (v) => CHART_H - (v / top) * (CHART_H - 12);
  const parts = [];
  let run = [];
  let lastT = null;
  for (const s of shown) {
    const v = value(s);
    if (v === null || (lastT !== null && s.t_ms - lastT > 3000)) {
      if (run.length) parts.push(run);
      run = [];
    }
    if (v !== null) run.push([x(s.t_ms), y(v)]);
    lastT = s.t_ms;
  }
  if (run.length) parts.push(run);
  const children = [svgEl('line', { class: 'grid', x1: 0, x2: CHART_W, y1: CHART_H - 0.5, y2: CHART_H - 0.5 })];
  for (const p of parts) {
    const points = p.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(' ');
    if (p.length > 1) {
      const first = p[0][0].toFixed(1);
      const last = p[p.length - 1][0].toFixed(1);
      children.push(svgEl('polygon', { class: 'area', points: `${first},${CHART_H} ${points} ${last},${CHART_H}` }));
    }
    children.push(svgEl('polyline', { class: 'line', points: p.length > 1 ? points : `${points} ${points}` }));
  }
  if (showLimit) {
    children.push(svgEl('line', { class: 'limit', x1: 0, x2: CHART_W, y1: y(limit), y2: y(limit) }));
  }
  const scale = svgEl('text', { class: 'scale', x: 2, y: 10 });
  scale.textContent = format(top / 1.1);
  children.push(scale);
  const ago = svgEl('text', { class: 'scale', x: 2, y: CHART_H - 3 });
  ago.textContent = '10 min ago';
  children.push(ago);
  svg.replaceChildren(...children);
}

function drawCharts() {
  const last = charts.samples[charts.samples.length - 1];
  const fresh = last && Date.now() - last.t_ms < 5000;
  const opsNow = fresh && last.ops_per_s !== null ? formatRate(last.ops_per_s) : '–';
  $('ops-now').textContent = opsNow;
  $('memory-now').textContent = fresh
    ? `${formatSize(last.memory_used)} of ${formatSize(last.max_memory)}`
    : '–';
  drawChart($('ops-chart'), (s) => s.ops_per_s, formatRate, null);
  drawChart($('memory-chart'), (s) => s.memory_used, formatSize, last ? last.max_memory : null);
}

// Fetches the samples newer than those the page has; the charts are
// redrawn either way (time moves on).
async function pollStats() {
  if (charts.polling) return;
  charts.polling = true;
  try {
    const last = charts.samples[charts.samples.length - 1];
    const body = await api('GET', last ? `stats?since=${last.t_ms}` : 'stats');
    charts.samples.push(...body.samples);
    const oldest = Date.now() - WINDOW_MS - 5000;
    while (charts.samples.length && charts.samples[0].t_ms < oldest) charts.samples.shift();
  } catch (e) {
    // The table's own calls report an unreachable gateway.
  } finally {
    charts.polling = false;
    drawCharts();
  }
}

start();
