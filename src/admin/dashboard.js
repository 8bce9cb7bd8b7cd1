"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 1000, SHOWN = 50;
const history = new Map();      // "route\u0000pool" -> [{t, requests, errors, p50_ms, p99_ms}]
let since = 0, keepMs = 900000, intervalS = 2, data = null, colors = new Map();

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function color(pool) {
  if (!colors.has(pool)) colors.set(pool, `var(--p${colors.size % 6})`);
  return colors.get(pool);
}
function pct(x, digits = 1) { return (x * 100).toFixed(digits) + "%"; }
function ms(x) { return x == null ? "–" : x < 10 ? x.toFixed(2) + " ms" : x < 1000 ? x.toFixed(0) + " ms" : (x / 1000).toFixed(2) + " s"; }
function dur(s) {
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}
function ago(iso) { return dur((Date.now() - Date.parse(iso)) / 1000) + " ago"; }

/// The token typed in the header: sent with every call, so reads show what needs it (whole
/// mirror mismatches) and commands are allowed.
function auth() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...auth(), ...(opts.headers || {}) } });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  return { ok: r.ok, status: r.status, body, headers: r.headers };
}

let shownKey = "";

async function poll() {
  try {
    // The routes the page shows (the filter's, tripped first, 50 at most), then the rest.
    const q = $("filter").value.trim();
    const routes = await api(`/api/routes?limit=${SHOWN}&q=${encodeURIComponent(q)}`);
    if (!routes.ok) throw new Error("admin API answered with an error");
    const names = routes.body.map((r) => r.name).join(",");
    if (names !== shownKey) { history.clear(); since = 0; shownKey = names; }
    const [pools, flags, config, hist, fleet, experiments, events] = await Promise.all([
      api("/api/pools"), api("/api/flags"), api("/api/config"),
      api(`/api/history?since=${since}&routes=${encodeURIComponent(names)}`), api("/api/fleet"),
      api("/api/experiments"), api(eventSeq == null ? `/api/events?limit=${EVENTS}` : `/api/events?after=${eventSeq}&limit=${EVENTS}`),
    ]);
    if (![pools, flags, config, hist, fleet, experiments, events].every((x) => x.ok)) throw new Error("admin API answered with an error");
    absorb(hist.body);
    absorbEvents(events.body);
    for (const r of routes.body) if (r.mirror) sampleMirror(r.name, r.mirror, hist.body.now);
    for (const r of routes.body) if (r.session) sampleSession(r.name, r.session, hist.body.now);
    data = {
      routes: routes.body, total: Number(routes.headers.get("x-switchyard-total") || routes.body.length),
      pools: pools.body, flags: flags.body, config: config.body, fleet: fleet.body, now: hist.body.now,
      experiments: experiments.body,
    };
    $("live").className = "on";
    render();
  } catch (e) {
    $("live").className = "off";
    $("revision").textContent = "admin API unreachable — retrying";
  }
}

function absorb(h) {
  keepMs = h.keep_s * 1000; intervalS = h.interval_s;
  for (const s of h.series) {
    const key = s.route + "\u0000" + s.pool;
    const list = history.get(key) || [];
    for (const x of s.samples) if (!list.length || x.t > list[list.length - 1].t) list.push(x);
    while (list.length && list[0].t < h.now - keepMs) list.shift();
    history.set(key, list);
    if (s.samples.length) since = Math.max(since, s.samples[s.samples.length - 1].t);
  }
}

/// The audit trail, newest first (EVENTS at most), and the last number seen.
const EVENTS = 100;
let events = [], eventSeq = null;
function absorbEvents(body) {
  for (const e of body.events) if (eventSeq == null || e.seq > eventSeq) events.unshift(e);
  events = events.slice(0, EVENTS);
  // A restart with a fresh trail numbers from 0 again: start over.
  if (eventSeq != null && body.next_seq <= eventSeq) { events = []; eventSeq = null; return; }
  eventSeq = body.next_seq - 1;
}

/// Each mirrored route's counts over the last minute: [t, compared, mismatched, sent].
const mirrorSamples = new Map();
const MIRROR_WINDOW_MS = 60000;
function mirrorCounts(m) {
  const c = Object.fromEntries(m.counts);
  const mismatched = (c.status || 0) + (c.header || 0) + (c.body || 0);
  // Every copy that went to the shadow (compared or not); dropped ones never went.
  const copies = m.counts.reduce((a, [, n]) => a + n, 0) - (c.dropped || 0);
  return { c, compared: (c.match || 0) + mismatched, mismatched, copies };
}
function sampleMirror(route, m, now) {
  const { compared, mismatched, copies } = mirrorCounts(m);
  const list = mirrorSamples.get(route) || [];
  list.push([now, compared, mismatched, copies]);
  while (list.length > 2 && list[1][0] < now - MIRROR_WINDOW_MS) list.shift();
  mirrorSamples.set(route, list);
}

/// Each pool's requests by pin and by split, sampled each poll: the pinned share of the last
/// minute's requests comes from the oldest sample in it and the newest.
const sessionSamples = new Map();   // route -> [[t, {pool: [by_pin, by_split]}]]
function sampleSession(route, s, now) {
  const list = sessionSamples.get(route) || [];
  list.push([now, Object.fromEntries(s.pools.map((p) => [p.pool, [p.by_pin, p.by_split]]))]);
  while (list.length > 2 && list[1][0] < now - MIRROR_WINDOW_MS) list.shift();
  sessionSamples.set(route, list);
}

/// A route's sessions: per pool, requests by pin and by split (since start and the last
/// minute's pinned share), pins ended by reason, and whether a pin on it can still be honoured
/// — "no session left" says the pool can be shut down.
function sessionsPanel(r, now) {
  const s = r.session;
  if (!s) return "";
  const list = sessionSamples.get(r.name) || [];
  const first = list[0], last = list[list.length - 1];
  const rows = s.pools.map((p) => {
    let recent = "–";
    if (first && last && first !== last && first[1][p.pool] && last[1][p.pool]) {
      const pin = last[1][p.pool][0] - first[1][p.pool][0], split = last[1][p.pool][1] - first[1][p.pool][1];
      recent = pin + split > 0 ? `${pct(pin / (pin + split), 0)} of ${pin + split}` : "no requests";
    }
    const ended = Object.entries(p.ended).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ") || "–";
    const drain = p.drained ? `<span class="ok-text" data-drained>no session left</span>`
      : `pins may last ${dur(Math.max(1, (p.pins_valid_until_ms - now) / 1000))} more`;
    return `<tr data-session-pool="${esc(p.pool)}"><td><i style="background:${color(p.pool)}"></i> ${esc(p.pool)} <span class="muted">(weight ${p.weight})</span></td>
      <td data-by-pin>${p.by_pin}</td><td data-by-split>${p.by_split}</td><td>${esc(recent)}</td><td>${esc(ended)}</td><td data-drain>${drain}</td></tr>`;
  }).join("");
  const other = [["removed", s.ended_removed], ["forged", s.ended_forged]].filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ");
  return `<div class="mirror sessions" data-sessions><b>sessions</b> <span class="muted">cookie ${esc(s.cookie)} · idle ${dur(s.idle_s)} · max age ${dur(s.max_age_s)}${other ? " · pins ended: " + esc(other) : ""}</span>
    <table><tr><th>pool</th><th>by pin</th><th>by split</th><th>pinned, last minute</th><th>pins ended</th><th>drain</th></tr>${rows}</table></div>`;
}

/// The pool's figures over its last sample interval (zero when it had no requests then).
function latest(route, pool, now) {
  const list = history.get(route + "\u0000" + pool) || [];
  const last = list[list.length - 1];
  if (!last || now - last.t > intervalS * 1000 * 1.5 + POLL_MS) return { rps: 0, errorRate: null, p50: null, p99: null };
  return { rps: last.requests / intervalS, errorRate: last.errors / last.requests, p50: last.p50_ms, p99: last.p99_ms };
}

/// The charts' span: the last 15 minutes, or less while the history is younger (2 min at least).
function span(now) {
  let first = now;
  for (const list of history.values()) if (list.length) first = Math.min(first, list[0].t - intervalS * 1000);
  return Math.min(keepMs, Math.max(120000, now - first));
}

function spark(route, pool, pick, now, fmt, cls) {
  const list = history.get(route + "\u0000" + pool) || [];
  const w = 300, h = 36, spanMs = span(now), start = now - spanMs;
  const pts = list.filter((x) => x.t >= start).map((x) => [x.t, pick(x)]).filter((p) => p[1] != null);
  const max = Math.max(1e-9, ...pts.map((p) => p[1]));
  const X = (t) => ((t - start) / spanMs) * w, Y = (v) => h - 2 - (v / max) * (h - 6);
  // Intervals without requests are zero: the line drops to the axis between samples.
  let d = "", prev = null;
  for (const [t, v] of pts) {
    if (prev == null || t - prev > intervalS * 1000 * 1.5) d += (prev == null ? "" : ` L${X(prev + intervalS * 1000).toFixed(1)},${h - 2}`) + ` M${X(t - intervalS * 1000).toFixed(1)},${h - 2}`;
    d += ` L${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
    prev = t;
  }
  const top = pts.length ? "max " + fmt(max) : "no requests";
  return `<div class="chart ${cls}" title="the last ${dur(spanMs / 1000)}">${cls} <span style="float:right">${esc(top)}</span>
    <svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none"><path d="${d}" fill="none" stroke="${color(pool)}" stroke-width="1.5"/></svg></div>`;
}

function bar(shares) {
  return `<div class="bar">${shares.filter((s) => s.share > 0).map((s) =>
    `<span style="width:${s.share * 100}%;background:${color(s.pool)}" title="${esc(s.pool)} ${pct(s.share, 2)}">${esc(s.pool)} ${pct(s.share, 0)}</span>`).join("")}</div>`;
}

function routeCard(r, now) {
  const guard = r.guard, rollout = r.rollout;
  const badges = [];
  if (r.tripped) badges.push(`<span class="badge bad tripped-badge">tripped</span>`);
  if (guard) badges.push(guard.dry_run ? `<span class="badge warn">guard: dry run</span>` : `<span class="badge ok">guarded → ${esc(guard.baseline)}</span>`);
  if (rollout) badges.push(`<span class="badge">rollout</span>`);
  let html = `<div class="card${r.tripped ? " tripped" : ""}" data-route="${esc(r.name)}">
    <div class="head"><h2>${esc(r.name)}</h2><span class="where">${esc(r.host || "any host")}${esc(r.path_prefix)}</span>${badges.join("")}
      <span class="grow"></span>
      ${guard ? `<button class="danger" data-action="rollback" data-route="${esc(r.name)}">Roll back</button>
      <button data-action="reset" data-route="${esc(r.name)}">Reset</button>` : ""}
      ${rollout ? `<button data-action="promote" data-route="${esc(r.name)}">Promote</button>` : ""}
    </div>
    <div class="splits"><span>configured</span>${bar(r.configured)}<span>effective</span>${bar(r.effective)}</div>`;
  if (rollout) {
    const last = rollout.step + 1 === rollout.steps.length;
    let next = last ? "last step reached" : "";
    if (!last && rollout.since) {
      const left = Date.parse(rollout.since) / 1000 + rollout.every_s - now / 1000;
      next = left > 0 ? `next step (${rollout.steps[rollout.step + 1]}%) in ${dur(left)}` : `next step (${rollout.steps[rollout.step + 1]}%) when the guard passes`;
    }
    if (r.tripped && rollout.since == null) next = "aborted";
    html += `<div class="rollout" data-rollout>rollout of <b>${esc(rollout.pool)}</b>: step ${rollout.step + 1} of ${rollout.steps.length} (${rollout.percent}%) · ${esc(next)}
      <div class="progress"><span style="width:${((rollout.step + 1) / rollout.steps.length) * 100}%"></span></div></div>`;
  }
  if (r.trips.length) {
    html += `<div class="trips">${r.trips.map((t) => `<div class="trip"><b>${esc(t.pool)}</b> ${t.manual ? "rolled back" : "tripped"} ${esc(ago(t.at))}: ${esc(t.reason)}${t.manual ? "" : ` <span class="muted">(${t.requests} requests, ${t.errors} errors${t.p99_ms != null ? ", p99 " + ms(t.p99_ms) : ""})</span>`}</div>`).join("")}</div>`;
  }
  html += mirrorPanel(r) + checksPanel(guard) + sessionsPanel(r, now);
  const reports = new Map((guard ? guard.pools : []).map((p) => [p.pool, p]));
  html += `<div class="pools">`;
  for (const s of r.configured) {
    const f = latest(r.name, s.pool, now), rep = reports.get(s.pool);
    let window = "";
    if (rep) {
      const v = rep.verdict ? rep.verdict.verdict : "baseline";
      const cls = v === "fail" ? "fail" : "";
      window = `<div class="window">${rep.tripped ? "at the trip, guard window" : "guard window"} ${dur(guard.window_s)}: ${rep.figures.requests} req, ${rep.figures.errors} err, p50 ${ms(rep.figures.p50)}, p99 ${ms(rep.figures.p99)} · <span class="${cls}" data-verdict>${esc(v)}</span>${rep.verdict && rep.verdict.reason ? ": " + esc(rep.verdict.reason) : ""}</div>`;
    }
    const eff = (r.effective.find((e) => e.pool === s.pool) || { share: 0 }).share;
    html += `<div class="pool" data-pool="${esc(s.pool)}"><h3><i style="background:${color(s.pool)}"></i>${esc(s.pool)} <span class="muted" style="font-weight:400">${pct(eff, 1)} of users</span></h3>
      <div class="figs"><div>req/s<b class="rps">${f.rps.toFixed(f.rps < 10 ? 1 : 0)}</b></div><div>errors<b class="errors">${f.errorRate == null ? "–" : pct(f.errorRate, 2)}</b></div>
      <div>p50<b class="p50">${ms(f.p50)}</b></div><div>p99<b class="p99">${ms(f.p99)}</b></div></div>${window}
      <div class="charts">${spark(r.name, s.pool, (x) => x.requests / intervalS, now, (v) => v.toFixed(0) + "/s", "req/s")}
      ${spark(r.name, s.pool, (x) => x.errors / x.requests, now, (v) => pct(v, 1), "errors")}
      ${spark(r.name, s.pool, (x) => x.p99_ms, now, ms, "p99")}</div></div>`;
  }
  return html + `</div></div>`;
}

/// A guard's checks on the application's own metrics: per check, each pool's last value against
/// the baseline's, its verdict and failures in a row, and the history of both values.
function checksPanel(guard) {
  if (!guard || !guard.checks || !guard.checks.length) return "";
  const num = (v) => (v == null ? "no data" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(4).replace(/\.?0+$/, ""));
  const rows = guard.checks.map((c) => {
    const lines = c.pools.map((p) => {
      const v = p.verdict || "not run yet";
      const cls = v === "fail" || v === "error" ? "fail" : v === "inconclusive" ? "muted" : "";
      return `<tr data-check="${esc(c.name)}" data-check-pool="${esc(p.pool)}"><td><i style="background:${color(p.pool)}"></i> ${esc(p.pool)}${p.baseline ? " <span class=\"muted\">(baseline)</span>" : ""}</td>
        <td data-check-value>${esc(num(p.value))}</td><td>${p.baseline ? "" : esc(num(p.baseline_value))}</td>
        <td><span class="${cls}" data-check-verdict>${esc(v)}</span>${p.reason ? ": " + esc(p.reason) : ""}${p.baseline ? "" : ` <span class="muted">(${p.failures}/${p.failure_limit} in a row)</span>`}</td>
        <td>${checkHistory(p)}</td></tr>`;
    }).join("");
    return `<div class="check"><b>${esc(c.name)}</b> <span class="muted">${esc(c.condition)} · every ${dur(c.interval_s)} · ${c.failure_limit} failure(s) in a row trip · no data ${c.no_data === "fail" ? "fails" : "holds"}</span>
      <div><code>${esc(c.query)}</code></div>
      <table><tr><th>pool</th><th>value</th><th>baseline</th><th>verdict</th><th>history</th></tr>${lines}</table></div>`;
  }).join("");
  const waits = guard.rollout_waits ? `<div class="banner" data-rollout-waits>${esc(guard.rollout_waits)}</div>` : "";
  return `<div class="checks mirror" data-checks><b>checks</b> <span class="muted">(the application's own metrics, from Prometheus)</span>${waits}${rows}</div>`;
}

/// A check's last values for a pool (solid) and its baseline (dashed), oldest first; failed
/// measurements marked.
function checkHistory(p) {
  const h = p.history || [], w = 160, ht = 24;
  const vals = h.flatMap((x) => [x.value, x.baseline]).filter((v) => v != null);
  if (!vals.length) return `<span class="muted">no values</span>`;
  const lo = Math.min(...vals), hi = Math.max(...vals), range = hi - lo || 1;
  const X = (i) => (h.length < 2 ? w / 2 : (i / (h.length - 1)) * w), Y = (v) => ht - 2 - ((v - lo) / range) * (ht - 4);
  const path = (pick) => h.map((x, i) => [i, pick(x)]).filter((q) => q[1] != null).map((q, j) => `${j ? "L" : "M"}${X(q[0]).toFixed(1)},${Y(q[1]).toFixed(1)}`).join(" ");
  const fails = h.map((x, i) => (x.verdict === "fail" ? `<circle cx="${X(i).toFixed(1)}" cy="${ht - 2}" r="1.5" fill="#c0392b"/>` : "")).join("");
  return `<svg width="${w}" height="${ht}" viewBox="0 0 ${w} ${ht}"><path d="${path((x) => x.baseline)}" fill="none" stroke="#999" stroke-dasharray="3 2"/><path d="${path((x) => x.value)}" fill="none" stroke="${color(p.pool)}" stroke-width="1.5"/>${fails}</svg>`;
}

/// A parallel run: the shadow pool's copies, the match rate over the last minute, since its
/// comparison settings changed and since start, and the last mismatches' first differences
/// (credentials shown only to a reader who gave the token).
function mirrorPanel(r) {
  const m = r.mirror;
  if (!m) return "";
  const { c, compared, mismatched, copies } = mirrorCounts(m);
  const list = mirrorSamples.get(r.name) || [];
  let recent = "–", rate = "–";
  if (list.length >= 2) {
    const a = list[0], b = list[list.length - 1], dc = b[1] - a[1], dm = b[2] - a[2];
    const secs = Math.max(1, (b[0] - a[0]) / 1000);
    recent = dc > 0 ? `${pct(1 - dm / dc, 1)} of ${dc}` : "nothing compared";
    rate = ((b[3] - a[3]) / secs).toFixed(1) + "/s";
  }
  const matchOf = (x) => (x == null ? "–" : pct(1 - x, 1));
  const mm = (m.recent || []).slice().reverse().slice(0, 5);
  return `<div class="mirror" data-mirror>
    <div><b>parallel run</b> → <b>${esc(m.pool)}</b> <span class="muted">${m.percent}% of users${m.compare ? ", answers compared" : ""} · ${rate} copies · ${m.in_flight}/${m.max_in_flight} in flight</span></div>
    <div class="figs mirror-figs">
      <div>match, last 1m<b data-match-recent>${esc(recent)}</b></div>
      <div>since settings changed<b data-match-current>${matchOf(m.current_mismatch_rate)}</b></div>
      <div>since start<b data-match-start>${matchOf(m.mismatch_rate)}</b></div>
      <div>copies sent<b data-sent>${copies}</b></div>
    </div>
    <div class="muted">compared ${compared} · mismatched ${mismatched} (status ${c.status || 0}, header ${c.header || 0}, body ${c.body || 0}) · dropped ${c.dropped || 0} · too large ${c.too_large || 0} · shadow errors ${c.shadow_error || 0} · incomplete ${c.incomplete || 0}</div>
    ${mm.length ? `<table class="mismatches"><tr><th>when</th><th>kind</th><th>request</th><th>first difference</th></tr>${mm.map((x) =>
      `<tr data-mismatch><td>${esc(ago(x.at))}</td><td>${esc(x.kind)}</td><td>${esc(x.method)} ${esc(x.path)}</td><td><code>${esc(x.diff)}</code></td></tr>`).join("")}</table>` : ""}
  </div>`;
}

function experimentsPanel(list) {
  if (!list.length) return `<span class="muted">no experiments</span>`;
  const p = (x) => (x == null ? "–" : x < 0.001 ? "<0.001" : x.toFixed(3));
  return list.map((e) => `<div class="experiment" data-experiment="${esc(e.name)}">
    <div><b>${esc(e.name)}</b> <span class="muted">${esc(e.subject)} · goal ${esc(e.goal)}</span></div>
    ${e.srm && e.srm.mismatch ? `<div class="banner" data-srm>sample ratio mismatch (p = ${p(e.srm.p_value)}): users do not reach the arms in the configured shares; do not read these results</div>` : ""}
    <table><tr><th>arm</th><th>share</th><th>users</th><th>converted</th><th>rate</th><th>95% interval</th><th>vs first</th><th>p-value</th></tr>
    ${e.arms.map((a) => `<tr data-arm="${esc(a.name)}"><td>${esc(a.name)}</td><td class="num">${pct(a.weight, 0)}</td><td class="num">${a.exposed}</td><td class="num">${a.converted}</td>
      <td class="num">${pct(a.rate, 1)}</td><td class="num">${pct(a.ci[0], 1)} – ${pct(a.ci[1], 1)}</td>
      <td class="num">${a.difference == null ? "–" : (a.difference >= 0 ? "+" : "") + (a.difference * 100).toFixed(1) + " pts"}</td><td class="num">${p(a.p_value)}</td></tr>`).join("")}
    </table></div>`).join("");
}

function fleetPanel(f) {
  if (!f.prometheus) return `<span class="muted">one replica (no [fleet]):</span> ${esc(f.replica || "")}`;
  const state = f.up == null ? "not asked yet" : f.up ? "answers" : "does not answer";
  return `<table>
    <tr><th>Prometheus</th><td>${esc(f.prometheus)} <span class="${f.up ? "up" : "down"}" data-prometheus>${state}</span>${f.error ? ": " + esc(f.error) : ""}</td></tr>
    <tr><th>last answer</th><td>${f.last_answer ? esc(ago(f.last_answer)) : "never"}</td></tr>
    <tr><th>replicas seen</th><td data-replicas>${f.replicas}${f.members && f.members.length ? ": " + f.members.map(esc).join(", ") : ""}</td></tr>
    <tr><th>this replica</th><td>${esc(f.replica)}${f.notifier === f.replica ? " (sends the fleet's webhooks)" : f.notifier ? ` (webhooks: ${esc(f.notifier)})` : ""}</td></tr>
    <tr><th>judging</th><td>${esc(f.judging)}${f.held ? " · guarded routes held at their baselines until the fleet answers" : ""}</td></tr>
  </table>`;
}

const BAD = new Set(["trip", "rollout_aborted", "reload_failed", "state_save_failed"]);
const OPERATOR = new Set(["rollback", "reset"]);
function eventsPanel() {
  if (!events.length) return `<span class="muted">no events yet</span>`;
  return `<table>${events.map((e) => `<tr data-event="${e.seq}" data-kind="${esc(e.kind)}">
    <td class="num" title="${esc(e.at)}">${esc(ago(e.at))}</td>
    <td><span class="badge${BAD.has(e.kind) ? " bad" : OPERATOR.has(e.kind) ? " warn" : ""}">${esc(e.kind.replace(/_/g, " "))}</span></td>
    <td>${esc(e.route || "")}</td><td>${esc(e.text)}</td></tr>`).join("")}</table>`;
}

function render() {
  const { routes, total, pools, flags, config, fleet, now } = data;
  $("revision").textContent = `revision ${config.revision} · loaded ${ago(config.loaded_at)}` +
    (fleet.prometheus && fleet.up ? ` · fleet of ${fleet.replicas}` : "");
  const lr = config.last_reload;
  $("reload").textContent = lr ? `last reload: ${lr.result}, ${ago(lr.at)}` : "";
  const banners = [];
  if (config.last_error && (!lr || lr.result === "error")) banners.push(`the last config reload failed ${esc(ago(config.last_error.at))}; the proxy serves revision ${esc(config.revision)}:<pre style="margin:6px 0 0;white-space:pre-wrap">${esc(config.last_error.error || "")}</pre>`);
  if (fleet.prometheus && fleet.up === false) banners.push(`the fleet's Prometheus (${esc(fleet.prometheus)}) does not answer: ${esc(fleet.error || "")}; judging this replica's numbers only`);
  if (config.state && config.state.save_error) banners.push(`the state file could not be saved: ${esc(config.state.save_error.error)}`);
  if (config.state && config.state.load_error) banners.push(`the state file could not be read at start: ${esc(config.state.load_error.error)}`);
  $("banners").innerHTML = banners.map((b) => `<div class="banner">${b}</div>`).join("");
  // The admin API sent the filter's routes, tripped first, SHOWN at most.
  $("count").textContent = total > routes.length ? `${routes.length} of ${total} shown` : `${routes.length} route${routes.length === 1 ? "" : "s"}`;
  $("routes").innerHTML = routes.map((r) => routeCard(r, now)).join("");
  $("events").innerHTML = eventsPanel();
  $("experiments").innerHTML = experimentsPanel(data.experiments);
  $("fleet").innerHTML = fleetPanel(fleet);
  $("flags").innerHTML = flags.length ? `<table><tr><th>flag</th><th>decisions</th><th></th></tr>${flags.map((f) => {
    const total = f.decisions.reduce((a, [, n]) => a + n, 0);
    const parts = f.decisions.filter(([, n]) => n > 0);
    return `<tr data-flag="${esc(f.name)}"><td>${esc(f.name)}</td><td class="num">${total}</td><td><div class="share">${parts.map(([v, n], i) =>
      `<span style="width:${(n / total) * 100}%;background:var(--p${v === "off" ? 5 : i % 5})" title="${esc(v)} ${pct(n / total)}"></span>`).join("")}</div>
      <span class="muted">${parts.map(([v, n]) => `${esc(v)} ${pct(n / total)}`).join(" · ") || "no decisions yet"}</span></td></tr>`;
  }).join("")}</table>` : `<span class="muted">no flags</span>`;
  $("endpoints").innerHTML = `<table><tr><th>pool</th><th>endpoint</th><th>state</th><th>in flight</th></tr>${pools.flatMap((p) => p.endpoints.map((e) =>
    `<tr><td>${esc(p.name)}</td><td>${esc(e.address)}</td><td class="${e.available ? "up" : "down"}">${e.available ? "up" : e.ejected_for_s != null ? `ejected (${dur(e.ejected_for_s)} left)` : "failing checks"}</td><td class="num">${e.in_flight}</td></tr>`)).join("")}</table>`;
}

async function act(action, route) {
  const r = await api(`/api/routes/${encodeURIComponent(route)}/${action}`, { method: "POST" });
  // A command's result names its route already ("web: 1 trip(s) cleared").
  const msg = r.ok ? r.body.result : r.status === 401 ? `refused: ${r.body && r.body.error} — enter the token above` : `${route}: ${(r.body && r.body.error) || "HTTP " + r.status}`;
  $("message").innerHTML = `<div class="${r.ok ? "ok" : "error"}" data-status="${r.status}">${esc(msg)}</div>`;
  if (r.status === 401) $("token").focus();
  poll();
}

document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-action]");
  if (!b) return;
  const { action, route } = b.dataset;
  // Every change of state asks first.
  const ask = {
    rollback: `Send every user of ${route} to its baseline?`,
    reset: `Clear the trips of ${route} (its users go back to the split; a rollout starts again from its first step)?`,
    promote: `Move ${route}'s rollout on to its next step?`,
  }[action];
  if (ask && !confirm(ask)) return;
  act(action, route);
});
$("filter").addEventListener("input", () => poll());
poll();
setInterval(poll, POLL_MS);

// The token form never submits (it only holds the token for the buttons).
document.getElementById("auth").addEventListener("submit", (e) => e.preventDefault());
