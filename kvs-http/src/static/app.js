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

function fillRow(tr, entry) {
  const [key, value, version, time] = tr.children;
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
  for (const cls of ['key', 'value', 'num', 'time']) {
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
    if (action === 'insert') {
      await api('POST', 'post', { key, value });
      showNotice(`Inserted ${key}`);
    } else {
      await api('POST', 'set', { key, value });
      showNotice(`Set ${key}`);
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
}

start();
