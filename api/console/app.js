// The analyst console: employees ranked by risk, their timelines, live.
// Every upstream value is shown as text (textContent), never as markup; the
// token lives in this tab's sessionStorage and travels only as a header.
'use strict';

const PRIORITIES = ['low', 'medium', 'high', 'critical'];
const SCORES = { low: 21, medium: 47, high: 73, critical: 99 };
const ZETA = 2.612375348685488;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem('incidents-token') || '';
let cursor = '';           // next page of the ranking
let filtered = '';         // the filter query, when the list is filtered
let openEmployee = '';     // the employee page shown, if any
let refreshTimer = 0;
let loads = 0;             // counts loads: an answer to a superseded one is dropped

// visible shows control, bidirectional and invisible characters as
// ⟨U+XXXX⟩, so that an upstream value can neither read reversed nor hide.
const HIDDEN = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/g;
function visible(s) {
  return String(s).replace(HIDDEN, (c) => '⟨U+' + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0') + '⟩');
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = visible(text);
  if (cls) e.className = cls;
  return e;
}

async function api(path) {
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  const resp = await fetch(path, { headers, credentials: 'omit', cache: 'no-store' });
  if (resp.status === 401) { showLogin('this token is not accepted'); throw new Error('unauthorized'); }
  return resp;
}

function showLogin(message) {
  $('app').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
}

async function start() {
  const resp = await fetch('/risk?limit=1', { headers: token ? { Authorization: 'Bearer ' + token } : {}, credentials: 'omit' });
  if (resp.status === 401) { showLogin(token ? 'this token is not accepted' : ''); return; }
  $('login').hidden = true;
  $('app').hidden = false;
  window.addEventListener('hashchange', route);
  route();
  health();
  setInterval(health, 5000);
  listen();
}

function bars(counts) {
  const total = PRIORITIES.reduce((n, p) => n + (counts[p] || 0), 0) || 1;
  const div = el('div', undefined, 'bars');
  div.title = PRIORITIES.map((p) => p + ' ' + (counts[p] || 0)).join(', ');
  for (const p of PRIORITIES) {
    const s = el('span', undefined, p);
    s.style.width = (100 * (counts[p] || 0) / total) + '%';
    div.appendChild(s);
  }
  return div;
}

function rankingRow(rank, e) {
  const tr = el('tr', undefined, 'employee');
  tr.dataset.employee = e.employee_id;
  tr.appendChild(el('td', rank));
  tr.appendChild(el('td', e.employee_id));
  tr.appendChild(el('td', e.score === undefined ? '' : e.score.toFixed(2)));
  tr.appendChild(el('td', e.level || '', 'level-' + (e.level || '')));
  const td = el('td');
  td.appendChild(bars(e.counts));
  tr.appendChild(td);
  tr.addEventListener('click', () => go('#/employees/' + encodeURIComponent(e.employee_id)));
  return tr;
}

async function loadRanking(reset, notice) {
  const load = ++loads;
  const body = $('ranking-rows');
  if (reset) { cursor = ''; body.replaceChildren(); }
  $('ranking-notice').hidden = !notice;
  $('ranking-notice').textContent = notice || '';
  let resp, rows = [];
  if (filtered) {
    resp = await api('/incidents?limit=100&' + filtered + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
    const doc = await resp.json();
    if (load !== loads) return;
    for (const [id, d] of Object.entries(doc)) {
      const counts = {};
      for (const p of PRIORITIES) counts[p] = d[p].count;
      rows.push({ employee_id: id, counts });
    }
  } else {
    resp = await api('/risk?limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
    if (load !== loads) return;
    if (resp.status === 410) {
      return loadRanking(true, 'The ranking moved on since this list was loaded (its pages are kept 10 minutes); it starts again from the top.');
    }
    rows = (await resp.json()).employees;
    if (load !== loads) return;
  }
  cursor = resp.headers.get('X-Next-Cursor') || '';
  let rank = body.children.length;
  for (const e of rows) body.appendChild(rankingRow(++rank, e));
  $('more').hidden = !cursor;
}

// fieldsText lists every field of an incident but those shown in columns,
// whatever its name: own keys only, never through a setter (a field named
// __proto__ is a field like any other).
const COLUMNS = new Set(['type', 'priority', 'timestamp']);
function fieldsText(inc) {
  return Object.keys(inc).filter((k) => !COLUMNS.has(k))
    .map((k) => JSON.stringify(k) + ': ' + JSON.stringify(Object.getOwnPropertyDescriptor(inc, k).value)).join('\n');
}

function when(ts) {
  const d = new Date(Number(ts) * 1000);
  return isNaN(d) ? String(ts) : d.toISOString().replace('T', ' ').replace('Z', '');
}

function incidentRow(inc) {
  const tr = el('tr');
  tr.appendChild(el('td', when(inc.timestamp)));
  tr.appendChild(el('td', inc.type));
  tr.appendChild(el('td', inc.priority, 'level-' + inc.priority));
  const td = el('td');
  td.appendChild(el('pre', fieldsText(inc)));
  tr.appendChild(td);
  return tr;
}

function timeline(incidents) {
  const svg = $('timeline');
  svg.replaceChildren();
  if (!incidents.length) return;
  // The busiest employees have hundreds of thousands: draw at most
  // maxDots, evenly spread, and say so (no spread into Math.min either).
  const maxDots = 5000;
  const step = Math.ceil(incidents.length / maxDots);
  if (step > 1) incidents = incidents.filter((_, i) => i % step === 0);
  const ts = incidents.map((i) => Number(i.timestamp));
  let lo = Infinity, hi = -Infinity;
  for (const t of ts) { if (t < lo) lo = t; if (t > hi) hi = t; }
  const span = (hi - lo) || 1;
  const ns = 'http://www.w3.org/2000/svg';
  // The time axis: a line, the first and last moments, the priorities.
  const axis = document.createElementNS(ns, 'line');
  axis.setAttribute('x1', '10'); axis.setAttribute('x2', '990');
  axis.setAttribute('y1', '108'); axis.setAttribute('y2', '108');
  axis.setAttribute('class', 'axis');
  svg.appendChild(axis);
  const label = (x, anchor, text) => {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', String(x)); t.setAttribute('y', '119');
    t.setAttribute('text-anchor', anchor); t.setAttribute('class', 'axis-label');
    t.textContent = text;
    svg.appendChild(t);
  };
  label(10, 'start', when(lo));
  label(990, 'end', when(hi));
  incidents.forEach((inc, i) => {
    const c = document.createElementNS(ns, 'circle');
    c.setAttribute('cx', String(10 + 980 * (ts[i] - lo) / span));
    c.setAttribute('cy', String(100 - 25 * PRIORITIES.indexOf(inc.priority)));
    c.setAttribute('r', '4');
    c.setAttribute('class', 'incident ' + inc.priority);
    const title = document.createElementNS(ns, 'title');
    title.textContent = when(inc.timestamp) + ' ' + inc.type + ' ' + inc.priority;
    c.appendChild(title);
    svg.appendChild(c);
  });
}

// explain lists what makes an employee's score, as GET /risk ranks it:
// each incident's priority score, decayed to the ranking's moment when the
// scores decay (rk: GET /risk/{id}), weighted by its place.
function explain(incidents, rk) {
  const decay = (inc) => {
    const age = rk && rk.half_life_seconds > 0 ? rk.scored_at - Number(inc.timestamp) : 0;
    return age > 0 ? Math.pow(2, -age / rk.half_life_seconds) : 1;
  };
  const scored = incidents.map((inc) => ({ inc, s: (SCORES[inc.priority] || 0) * decay(inc) })).sort((a, b) => b.s - a.s);
  let total = 0;
  scored.forEach((x, i) => { x.term = x.s / Math.pow(i + 1, 1.5) / ZETA; total += x.term; });
  const body = $('explain-rows');
  body.replaceChildren();
  for (const x of scored.slice(0, 10)) {
    const tr = el('tr');
    tr.appendChild(el('td', when(x.inc.timestamp) + ' ' + x.inc.type));
    tr.appendChild(el('td', x.inc.priority, 'level-' + x.inc.priority));
    tr.appendChild(el('td', x.term.toFixed(2)));
    tr.appendChild(el('td', (total ? 100 * x.term / total : 0).toFixed(1) + '%'));
    body.appendChild(tr);
  }
  return total;
}

async function openPage(id) {
  const load = ++loads;
  const [resp, rkResp] = await Promise.all([
    api('/incidents/' + encodeURIComponent(id) + (filtered ? '?' + filtered : '')),
    api('/risk/' + encodeURIComponent(id))]);
  const rk = rkResp.ok ? await rkResp.json() : null;
  if (load !== loads) return;
  show('employee');
  openEmployee = id;
  $('employee-title').textContent = 'Employee ' + id;
  if (resp.status === 404) {
    $('employee-summary').textContent = 'No incidents for this employee.';
    for (const t of ['incident-rows', 'explain-rows', 'timeline']) $(t).replaceChildren();
    return;
  }
  const doc = await resp.json();
  if (load !== loads) return;
  const incidents = [];
  for (const p of PRIORITIES) for (const inc of doc[p].incidents) incidents.push(inc);
  incidents.sort((a, b) => Number(a.timestamp) - Number(b.timestamp));
  timeline(incidents);
  const score = explain(incidents, rk);
  // The score as ranked; the explanation's own sum only when filtered.
  const shown = rk && !filtered ? rk.score : score;
  $('employee-summary').textContent = incidents.length + ' incidents, risk score ' + shown.toFixed(2) +
    (rk && !filtered ? ' (rank ' + rk.rank + ')' : '') +
    (incidents.length > 5000 ? ' (the timeline shows 1 in ' + Math.ceil(incidents.length / 5000) + ', the table the newest 500)' : '');
  const body = $('incident-rows');
  body.replaceChildren();
  for (const inc of incidents.slice(-500).reverse()) body.appendChild(incidentRow(inc));
}

async function loadUnattributed() {
  const load = ++loads;
  const doc = await (await api('/unattributed')).json();
  if (load !== loads) return;
  const body = $('unattributed-rows');
  body.replaceChildren();
  for (const inc of doc.incidents || []) body.appendChild(incidentRow(inc));
}

function show(which) {
  for (const s of ['ranking', 'unattributed', 'employee']) $(s).hidden = s !== which;
  $('tab-ranking').classList.toggle('active', which === 'ranking');
  $('tab-unattributed').classList.toggle('active', which === 'unattributed');
  if (which !== 'employee') openEmployee = '';
}

async function health() {
  try {
    const st = await (await api('/status')).json();
    const lag = Object.entries(st.lag).map(([k, v]) => k + ' ' + (v < 0 ? '?' : v)).join(', ');
    $('health-text').textContent = 'updated ' + (st.updated || '—') + ' · lag ' + lag +
      ' · dead letters ' + (st.dead_letters < 0 ? '?' : st.dead_letters) + ' · view ' + st.version +
      Object.keys(st.stuck || {}).map((e) => ' · ' + e + ' cannot advance').join('');
  } catch (e) { /* the next tick tries again */ }
}

// listen follows GET /events with fetch (EventSource cannot send the token)
// and refreshes what is on screen when the view changes.
async function listen() {
  let last = '';
  for (;;) {
    try {
      const headers = { Authorization: 'Bearer ' + token };
      if (last) headers['Last-Event-ID'] = last;
      const resp = await fetch('/events', { headers, credentials: 'omit', cache: 'no-store' });
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = { name: 'message', id: '', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) ev.name = line.slice(7);
            else if (line.startsWith('id: ')) ev.id = line.slice(4);
            else if (line.startsWith('data: ')) ev.data += line.slice(6);
          }
          if (ev.id) last = ev.id;
          if (ev.name === 'change' || ev.name === 'reset') changed(ev);
        }
      }
    } catch (e) { /* reconnect below */ }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function changed(ev) {
  let data = {};
  try { data = JSON.parse(ev.data); } catch (e) { /* a reset carries little */ }
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    if (!$('ranking').hidden) loadRanking(true);
    if (!$('unattributed').hidden) loadUnattributed();
    const emps = data.employees || [];
    if (openEmployee && (ev.name === 'reset' || data.more || emps.includes(openEmployee))) openPage(openEmployee);
    health();
  }, 200);
}

// Every view has its own URL, as a fragment (#/ranking?priority=high,
// #/employees/42, #/unattributed), so that it can be bookmarked, shared,
// opened in a new tab and reached with Back and Forward; a fragment never
// leaves the browser, so employee ids never reach a server's log.
function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

function route() {
  const hash = location.hash.replace(/^#/, '');
  let m;
  if ((m = /^\/employees\/([^/?]+)$/.exec(hash))) {
    const id = decodeURIComponent(m[1]);
    if (/^[0-9]+$/.test(id)) { openPage(id); return; }
  }
  if (hash === '/unattributed') { show('unattributed'); loadUnattributed(); return; }
  const query = hash.startsWith('/ranking?') ? hash.slice('/ranking?'.length) : '';
  setFilters(query);
  filtered = filterQuery();
  show('ranking');
  loadRanking(true);
}

// setFilters shows a filter query in the filter form.
function setFilters(query) {
  const q = new URLSearchParams(query);
  const local = (s) => { const d = new Date(Number(s) * 1000); return isNaN(d) ? '' : d.toISOString().slice(0, 16); };
  $('f-type').value = q.get('type') || '';
  $('f-priority').value = q.get('priority') || '';
  $('f-since').value = q.get('since') ? local(q.get('since')) : '';
  $('f-until').value = q.get('until') ? local(q.get('until')) : '';
}

function rankingHash() {
  const q = filterQuery();
  return '#/ranking' + (q ? '?' + q : '');
}

function filterQuery() {
  const q = new URLSearchParams();
  if ($('f-type').value) q.set('type', $('f-type').value);
  if ($('f-priority').value) q.set('priority', $('f-priority').value);
  const since = $('f-since').value, until = $('f-until').value;
  if (since) q.set('since', String(Date.parse(since + 'Z') / 1000));
  if (until) q.set('until', String(Date.parse(until + 'Z') / 1000));
  return q.toString();
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token').value.trim();
    sessionStorage.setItem('incidents-token', token);
    start();
  });
  $('more').addEventListener('click', () => loadRanking(false));
  $('tab-ranking').addEventListener('click', () => go(rankingHash()));
  $('tab-unattributed').addEventListener('click', () => go('#/unattributed'));
  $('back').addEventListener('click', () => go(rankingHash()));
  $('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('search-id').value.trim();
    if (/^[0-9]+$/.test(id)) go('#/employees/' + id);
  });
  $('filters').addEventListener('submit', (e) => { e.preventDefault(); go(rankingHash()); });
  $('f-clear').addEventListener('click', () => { $('filters').reset(); go('#/ranking'); });
  start();
});
