// The kvs page: a live table of the store's entries.
//
// On load (and on every `ready` or `resync` event) it reads all entries from
// /status, page by page; then it applies the `change` and `delete` events of
// /events to the table as they come. /events is read with fetch() rather than
// EventSource, so that the bearer token (if the gateway has one) travels in
// the Authorization header like on every other call. The token comes from
// `?token=` on the first visit (kept in sessionStorage, removed from the
// address bar) or from the form shown after a 401.
'use strict';

const TOKEN_KEY = 'kvs_http_token';
const $ = (id) => document.getElementById(id);

const state = {
  entries: new Map(), // key -> {key, value, version, modified_ms}
  rows: new Map(), // key -> <tr>
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
  return entry.key.toLowerCase().includes(filter) || entry.value.toLowerCase().includes(filter);
}

function fillRow(tr, entry) {
  const [key, value, version, time] = tr.children;
  key.textContent = entry.key;
  value.textContent = entry.value;
  version.textContent = entry.version;
  time.textContent = formatTime(entry.modified_ms);
  time.title = entry.modified_ms ? new Date(entry.modified_ms).toISOString() : '';
  tr.hidden = !matches(entry, currentFilter());
}

function makeRow(entry) {
  const tr = document.createElement('tr');
  tr.dataset.key = entry.key;
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
  del.title = `Delete ${entry.key}`;
  del.addEventListener('click', (ev) => {
    ev.stopPropagation();
    removeKey(tr.dataset.key);
  });
  actions.appendChild(del);
  tr.appendChild(actions);
  tr.addEventListener('click', () => {
    const e = state.entries.get(tr.dataset.key);
    if (e) {
      $('key').value = e.key;
      $('value').value = e.value;
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
  const known = state.entries.get(entry.key);
  if (known && known.version > entry.version) return;
  state.entries.set(entry.key, entry);
  state.version = Math.max(state.version, entry.version);
  let tr = state.rows.get(entry.key);
  if (tr) {
    fillRow(tr, entry);
  } else {
    tr = makeRow(entry);
    state.rows.set(entry.key, tr);
    const tbody = $('entries').tBodies[0];
    let before = null;
    for (const row of tbody.rows) {
      if (row.dataset.key > entry.key) { before = row; break; }
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

function remove(key, version) {
  const known = state.entries.get(key);
  if (known && version !== undefined && known.version > version) return;
  state.entries.delete(key);
  const tr = state.rows.get(key);
  if (tr) tr.remove();
  state.rows.delete(key);
  if (version !== undefined) state.version = Math.max(state.version, version);
  updateCounts();
}

function applyFilter() {
  const filter = currentFilter();
  for (const [key, tr] of state.rows) tr.hidden = !matches(state.entries.get(key), filter);
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
    for (const e of page.entries) entries.set(e.key, e);
    cursor = page.next_cursor;
  } while (cursor);
  $('region').textContent = first.region;
  $('value-limit').textContent = `${first.limits.value_max_bytes} B`;
  $('value').maxLength = first.limits.value_max_bytes;
  $('key').maxLength = first.limits.key_max_bytes;
  state.maxEntries = first.max_entries;
  const tbody = $('entries').tBodies[0];
  tbody.replaceChildren();
  state.entries = new Map();
  state.rows = new Map();
  state.version = 0; // a restarted server starts again from 0
  for (const key of [...entries.keys()].sort()) upsert(entries.get(key), false);
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
    case 'change':
      upsert({ key: data.key, value: data.value, version: data.version, modified_ms: data.modified_ms }, true);
      break;
    case 'delete':
      remove(data.key, data.version);
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

async function refreshKey(key) {
  // The event stream brings the change too; this keeps the table right
  // when live updates are down.
  try {
    upsert(await api('GET', `get/${enc(key)}`), true);
  } catch (e) {
    if (e.status === 404) remove(key);
  }
}

async function removeKey(key) {
  try {
    await api('DELETE', `del/${enc(key)}`);
    remove(key);
    showNotice(`Deleted ${key}`);
  } catch (e) {
    showError(e.message);
  }
}

async function submitEdit(ev) {
  ev.preventDefault();
  const action = ev.submitter ? ev.submitter.value : 'set';
  const key = $('key').value;
  const value = $('value').value;
  try {
    if (action === 'delete') {
      await removeKey(key);
      return;
    }
    if (action === 'insert') {
      await api('POST', 'post', { key, value });
      showNotice(`Inserted ${key}`);
    } else {
      await api('POST', 'set', { key, value });
      showNotice(`Set ${key}`);
    }
    await refreshKey(key);
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
