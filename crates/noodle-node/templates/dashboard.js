// Keeps the server-rendered dashboard live. Listens on /v1/dashboard/stream (SSE, same origin,
// cookie-authenticated): `status` messages carry a StatusReport and re-render totals, nodes and
// links; `panel` messages carry a subsystem's panel ({id, html}) rendered again by the node,
// which replaces the panel of that id; `event` messages carry one Event and are added to the
// events table.
//
// Data from the network is put into the page with textContent and attributes only. A panel's
// HTML is the node's own render (every user or network string escaped there); it is parsed
// inert and, as a second line of defence, stripped of scripts, frames and event-handler
// attributes before it replaces the panel. The formatting helpers mirror those in
// noodle-api's format module and must give the same strings.
(function () {
  'use strict';

  const STREAM_URL = '/v1/dashboard/stream';
  // Same bound as EVENTS_SHOWN_MAX in dashboard.rs.
  const EVENTS_SHOWN_MAX = 50;
  const STATES = ['alive', 'suspect', 'dead'];
  const BYTE_UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

  // Node id -> name, from the latest status, to show names instead of ids in links and events.
  let names = new Map();

  function byId(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  // value / unit in tenths, rounded half up (as tenths_of in dashboard.rs).
  function tenthsOf(value, unit) {
    return Math.floor((value * 10 + unit / 2) / unit);
  }

  function formatTenths(tenths, unit) {
    return Math.floor(tenths / 10) + '.' + (tenths % 10) + ' ' + unit;
  }

  // 512 B, 1.5 GiB, 23.4 GiB (as format_bytes in dashboard.rs).
  function formatBytes(bytes) {
    bytes = Number(bytes) || 0;
    if (bytes < 1024) {
      return bytes + ' B';
    }
    let index = 0;
    while (index + 1 < BYTE_UNITS.length && bytes >= Math.pow(1024, index + 2)) {
      index += 1;
    }
    let tenths = tenthsOf(bytes, Math.pow(1024, index + 1));
    if (tenths >= 10 * 1024 && index + 1 < BYTE_UNITS.length) {
      index += 1;
      tenths = tenthsOf(bytes, Math.pow(1024, index + 1));
    }
    return formatTenths(tenths, BYTE_UNITS[index]);
  }

  // 850 µs, 1.2 ms, 1.5 s (as format_rtt_us in dashboard.rs).
  function formatRtt(us) {
    us = Number(us) || 0;
    if (us < 1000) {
      return us + ' µs';
    }
    const tenthsMs = tenthsOf(us, 1000);
    if (tenthsMs < 10 * 1000) {
      return formatTenths(tenthsMs, 'ms');
    }
    return formatTenths(tenthsOf(us, 1000000), 's');
  }

  // 2023-11-14 22:13:20 UTC (as format_utc_ms in dashboard.rs).
  function formatUtc(ms) {
    const date = new Date(Number(ms) || 0);
    if (isNaN(date.getTime())) {
      return '';
    }
    const iso = date.toISOString();
    return iso.slice(0, 10) + ' ' + iso.slice(11, 19) + ' UTC';
  }

  function stateName(state) {
    return STATES.indexOf(state) >= 0 ? state : 'unknown';
  }

  function kindClass(kind) {
    return /^[a-z_]+$/.test(kind) ? kind : 'other';
  }

  function nameOf(id) {
    return names.get(id) || id;
  }

  function emptyRow(columns, text) {
    const tr = el('tr', 'empty');
    const td = el('td', '', text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  function renderTotals(t) {
    byId('t-alive').textContent = String(t.nodes_alive);
    byId('t-suspect').textContent = String(t.nodes_suspect);
    byId('t-dead').textContent = String(t.nodes_dead);
    byId('t-cpus').textContent = String(t.cpus);
    byId('t-mem').textContent =
      formatBytes(t.mem_available_bytes) + ' / ' + formatBytes(t.mem_total_bytes);
    byId('t-gpus').textContent = String(t.gpus);
  }

  // Mirrors `control_summary` in dashboard.rs.
  function renderControl(c) {
    let text = 'starting';
    if (c) {
      const voters = (c.voters || []).map(nameOf).join(', ');
      text = 'leader ' + (c.leader ? nameOf(c.leader) : 'none (electing)') +
        ' · voters ' + voters + ' · commit index ' + c.commit_index + ' · term ' + c.term;
    }
    byId('c-summary').textContent = text;
  }

  function nodeRow(n, selfId) {
    const isSelf = n.is_self || n.id === selfId;
    const state = stateName(n.state);
    const tr = el('tr', 'state-' + state + (isSelf ? ' self' : ''));
    tr.dataset.nodeId = n.id;

    const name = el('td', 'name');
    name.title = 'version ' + n.version + ', updated ' + formatUtc(n.updated_at_ms);
    name.append(el('span', 'node-name', n.name));
    if (isSelf) {
      const marker = el('span', 'self-marker', 'this node');
      marker.title = 'this node served the page';
      name.append(' ', marker);
    }

    const id = el('td');
    id.append(el('code', '', n.id));

    const stateCell = el('td');
    stateCell.append(el('span', 'state state-' + state, n.state));

    const addr = el('td');
    addr.append(el('code', '', n.addr));

    const gpus = el('td', 'num', n.gpus);
    const gpuList = n.gpu_list || [];
    if (gpuList.length > 0) {
      gpus.title = gpuList
        .map(function (g) {
          return g.index + ': ' + g.name + ' (' + formatBytes(g.mem_total_bytes) + ')';
        })
        .join('\n');
    }

    const labels = el('td', 'labels');
    const entries = Object.entries(n.labels || {}).sort(function (a, b) {
      return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
    });
    if (entries.length === 0) {
      labels.append(el('span', 'muted', '—'));
    }
    for (const [key, value] of entries) {
      labels.append(el('span', 'chip', key + '=' + value));
    }

    tr.append(
      name,
      id,
      stateCell,
      addr,
      el('td', 'num', n.cpus),
      el('td', 'num', formatBytes(n.mem_available_bytes) + ' / ' + formatBytes(n.mem_total_bytes)),
      el('td', 'num', (Number(n.load_1m) || 0).toFixed(2)),
      el('td', 'num', formatBytes(n.disk_free_bytes) + ' / ' + formatBytes(n.disk_total_bytes)),
      gpus,
      labels
    );
    return tr;
  }

  function renderNodes(report) {
    const rows = report.nodes.map(function (n) {
      return nodeRow(n, report.self);
    });
    byId('nodes-body').replaceChildren(...(rows.length ? rows : [emptyRow(10, 'No nodes known yet.')]));
  }

  function linkRow(l) {
    const tr = el('tr');
    tr.dataset.from = l.from;
    tr.dataset.peer = l.peer;
    const from = el('td', '', nameOf(l.from));
    from.title = l.from;
    const peer = el('td', '', nameOf(l.peer));
    peer.title = l.peer;
    const kx = el('td');
    kx.append(el('code', '', l.kx_group));
    tr.append(from, el('td', 'arrow', '→'), peer, el('td', 'num', formatRtt(l.rtt_us)), kx);
    return tr;
  }

  function renderLinks(links) {
    const rows = links.map(linkRow);
    byId('links-body').replaceChildren(...(rows.length ? rows : [emptyRow(5, 'No links measured yet.')]));
  }

  // A panel's HTML as an inert element: parsed without running anything, then stripped of
  // what could run once it is in the page.
  function inertPanel(html) {
    const doc = new DOMParser().parseFromString(String(html), 'text/html');
    const root = doc.body.firstElementChild;
    if (!root) {
      return null;
    }
    root.querySelectorAll('script, iframe, object, embed, link, meta, style').forEach(function (n) {
      n.remove();
    });
    for (const node of [root, ...root.querySelectorAll('*')]) {
      for (const attr of Array.from(node.attributes)) {
        const value = attr.value.trim().toLowerCase();
        if (attr.name.toLowerCase().startsWith('on') || value.startsWith('javascript:')) {
          node.removeAttribute(attr.name);
        }
      }
    }
    return document.importNode(root, true);
  }

  function eventRow(e) {
    const tr = el('tr');
    tr.dataset.seq = String(e.seq);
    tr.dataset.atMs = String(e.at_ms);
    const kind = el('td');
    kind.append(el('span', 'kind kind-' + kindClass(e.kind), e.kind));
    const node = el('td', '', nameOf(e.node));
    node.title = e.node;
    tr.append(el('td', 'time', formatUtc(e.at_ms)), kind, node, el('td', '', e.detail));
    return tr;
  }

  // True when the row shows an event older than e; rows are kept newest first by (at_ms, seq).
  function rowIsOlder(row, e) {
    const at = Number(row.dataset.atMs);
    return at < e.at_ms || (at === e.at_ms && Number(row.dataset.seq) < e.seq);
  }

  function addEvent(e) {
    const body = byId('events-body');
    const rows = Array.from(body.querySelectorAll('tr[data-seq]'));
    // After a reconnect the server may send an event the page already shows.
    const seq = String(e.seq);
    const at = String(e.at_ms);
    if (rows.some(function (r) { return r.dataset.seq === seq && r.dataset.atMs === at; })) {
      return;
    }
    body.querySelectorAll('tr.empty').forEach(function (r) { r.remove(); });
    const before = rows.find(function (r) { return rowIsOlder(r, e); }) || null;
    body.insertBefore(eventRow(e), before);
    const shown = body.querySelectorAll('tr[data-seq]');
    for (let i = EVENTS_SHOWN_MAX; i < shown.length; i += 1) {
      shown[i].remove();
    }
  }

  function showBanner(text) {
    const banner = byId('banner');
    banner.textContent = text;
    banner.hidden = false;
  }

  function hideBanner() {
    byId('banner').hidden = true;
  }

  function parse(message) {
    try {
      return JSON.parse(message.data);
    } catch (err) {
      console.warn('dashboard: ignoring a malformed message', err);
      return null;
    }
  }

  function onStatus(message) {
    const report = parse(message);
    if (!report || !Array.isArray(report.nodes) || !Array.isArray(report.links)) {
      return;
    }
    names = new Map(report.nodes.map(function (n) { return [n.id, n.name]; }));
    byId('cluster-id').textContent = report.cluster_id;
    const selfName = byId('self-name');
    selfName.textContent = nameOf(report.self);
    selfName.title = report.self;
    document.body.dataset.selfId = report.self;
    renderTotals(report.totals || {});
    renderControl(report.control);
    renderNodes(report);
    renderLinks(report.links);

    const now = new Date();
    document.body.dataset.live = '1';
    byId('live-text').textContent = 'live';
    const lastUpdate = byId('last-update');
    lastUpdate.textContent = formatUtc(now.getTime());
    lastUpdate.title = now.toISOString();
    hideBanner();
  }

  function onPanel(message) {
    const panel = parse(message);
    if (!panel || typeof panel.id !== 'string' || typeof panel.html !== 'string') {
      return;
    }
    const old = document.querySelector('[data-panel="' + CSS.escape(panel.id) + '"]');
    const fresh = inertPanel(panel.html);
    if (old && fresh && fresh.dataset.panel === panel.id) {
      old.replaceWith(fresh);
    }
  }

  function onEvent(message) {
    const e = parse(message);
    if (e && typeof e.seq === 'number' && typeof e.at_ms === 'number') {
      addEvent(e);
    }
  }

  // Names for events that arrive before the first status message.
  document.querySelectorAll('#nodes-body tr[data-node-id]').forEach(function (row) {
    const name = row.querySelector('.node-name');
    names.set(row.dataset.nodeId, name ? name.textContent : row.dataset.nodeId);
  });

  if (!('EventSource' in window)) {
    return;
  }
  const source = new EventSource(STREAM_URL);
  source.addEventListener('status', onStatus);
  source.addEventListener('panel', onPanel);
  source.addEventListener('event', onEvent);
  source.addEventListener('open', hideBanner);
  source.addEventListener('error', function () {
    document.body.dataset.live = '0';
    byId('live-text').textContent = 'offline';
    // CLOSED means the browser gave up (e.g. the session expired): only a reload helps.
    if (source.readyState === EventSource.CLOSED) {
      showBanner('Disconnected. Reload the page (you may need to sign in again).');
    } else {
      showBanner('Reconnecting…');
    }
  });
})();
