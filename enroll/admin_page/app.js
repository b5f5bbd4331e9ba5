// enroll admin page: a thin client of /admin/api/v1 (no build step, no dependencies).
// Every value from the server is put into the page with textContent, never as HTML: subjects
// and SANs come from devices' CSRs.
"use strict";

const API = "/admin/api/v1";
const REASONS = ["unspecified", "key_compromise", "affiliation_changed", "superseded", "cessation_of_operation",
  "certificate_hold", "privilege_withdrawn", "ca_compromise", "aa_compromise"];
let token = sessionStorage.getItem("enroll-admin-token") || "";

// --- helpers ----------------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function when(iso) { return iso ? iso.replace("T", " ").replace(/:\d\dZ$/, "") : "–"; }

function say(text, isError) {
  const m = document.getElementById("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const resp = await fetch(API + path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || ("HTTP " + resp.status));
  return data;
}

function setView(...children) {
  const v = document.getElementById("view");
  v.replaceChildren(...children);
}

function stateCell(state) { return el("td", { class: "state-" + state, "data-state": state }, state.replace("_", " ")); }

function certLink(c) { return el("a", { href: "#/cert/" + c.serial, class: "mono" }, c.serial); }

function certTable(items) {
  if (!items.length) return el("p", {}, "None.");
  return el("table", { class: "certs" },
    el("thead", {}, el("tr", {}, ["Serial", "Subject", "Profile", "State", "Not after", "Issued"].map(h => el("th", {}, h)))),
    el("tbody", {}, items.map(c => el("tr", { "data-serial": c.serial },
      el("td", {}, certLink(c)), el("td", {}, c.subject || ""), el("td", {}, c.profile), stateCell(c.state),
      el("td", {}, when(c.not_after)), el("td", {}, when(c.issued_at))))));
}

function reasonSelect(id, exclude) {
  return el("select", { id }, REASONS.filter(r => r !== exclude).map(r => el("option", { value: r }, r.replaceAll("_", " "))));
}

// --- charts: inline SVG from /charts, no library --------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#0b5cad", "#1e7a34", "#8a5a00", "#7b3fa0", "#b3261e", "#00707a", "#5c6670", "#c2185b"];

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Vertical bars, one per column; each column a stack of (series, value) segments.
function barChart(id, title, labels, series, opts) {
  const W = 720, H = 200, left = 36, bottom = 22, top = 8;
  const totals = labels.map((_, i) => series.reduce((a, s) => a + s.values[i], 0));
  const max = Math.max(1, ...totals);
  const step = (W - left) / labels.length, bw = Math.max(2, step * 0.75);
  const y = v => top + (H - top - bottom) * (1 - v / max);
  const svg = svgEl("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
    "data-max": max });
  svg.append(svgEl("line", { x1: left, x2: W, y1: y(0), y2: y(0), stroke: "#d8dde2" }),
    svgEl("text", { x: left - 4, y: y(max) + 4, "text-anchor": "end", class: "axis" }, max),
    svgEl("text", { x: left - 4, y: y(0), "text-anchor": "end", class: "axis" }, 0));
  labels.forEach((label, i) => {
    let base = 0;
    const x = left + i * step + (step - bw) / 2;
    for (const s of series) {
      const v = s.values[i];
      if (!v) continue;
      svg.append(svgEl("rect", { x, y: y(base + v), width: bw, height: y(base) - y(base + v), fill: s.color,
        class: "bar", "data-label": label, "data-series": s.name, "data-count": v },
        svgEl("title", {}, `${label}${s.name ? " " + s.name : ""}: ${v}`)));
      base += v;
    }
    if (opts.every && i % opts.every === 0) {
      svg.append(svgEl("text", { x: x + bw / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, opts.short(label)));
    }
  });
  return svg;
}

// Horizontal bars, one per row (refusal reasons).
function rowChart(id, title, rows) {
  const W = 720, rh = 22, left = 160;
  const H = Math.max(1, rows.length) * rh + 4;
  const max = Math.max(1, ...rows.map(r => r.count));
  const svg = svgEl("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
    "data-max": max });
  rows.forEach((r, i) => {
    const w = (W - left - 60) * r.count / max;
    svg.append(svgEl("text", { x: left - 6, y: i * rh + 15, "text-anchor": "end", class: "axis" }, r.reason),
      svgEl("rect", { x: left, y: i * rh + 3, width: Math.max(1, w), height: rh - 6, fill: "#b3261e", class: "bar",
        "data-label": r.reason, "data-count": r.count }, svgEl("title", {}, `${r.reason}: ${r.count}`)),
      svgEl("text", { x: left + w + 6, y: i * rh + 15, class: "axis" }, r.count));
  });
  return svg;
}

function legend(series) {
  return el("ul", { class: "legend" }, series.map(s => el("li", {},
    svgEl("svg", { width: 10, height: 10, viewBox: "0 0 10 10" }, svgEl("rect", { width: 10, height: 10, fill: s.color })),
    " ", s.name)));
}

async function charts() {
  const c = await api("GET", "/charts");
  const profiles = Object.keys(c.issued_per_day);
  const series = profiles.map((name, i) => ({ name, color: PALETTE[i % PALETTE.length], values: c.issued_per_day[name] }));
  const issuedTotal = series.reduce((a, s) => a + s.values.reduce((x, y) => x + y, 0), 0);
  const expTotal = c.expiring_per_week.reduce((a, b) => a + b, 0);
  return el("section", { id: "charts" },
    el("h3", {}, `Issued per day, last ${c.days.length} days (${issuedTotal})`),
    barChart("chart-issued", "certificates issued per day by profile", c.days,
      series.filter(s => s.values.some(v => v)), { every: 5, short: d => d.slice(5) }),
    legend(series.filter(s => s.values.some(v => v))),
    el("h3", {}, `Expiring per week, next ${c.expiring_per_week.length} weeks (${expTotal})`),
    barChart("chart-expiring", "valid certificates expiring per week", c.weeks.map(w => w.slice(0, 10)),
      [{ name: "", color: "#8a5a00", values: c.expiring_per_week }], { every: 2, short: w => w.slice(5) }),
    el("h3", {}, "Refusals by reason, last 30 days"),
    c.refusals.length ? rowChart("chart-refusals", "refusals by reason", c.refusals) : el("p", { id: "no-refusals" }, "None."));
}

// --- views ------------------------------------------------------------------------------------------
async function overview() {
  const o = await api("GET", "/overview");
  const rows = Object.entries(o.profiles).map(([name, c]) => el("tr", {},
    el("td", {}, el("a", { href: "#/certs?profile=" + encodeURIComponent(name) }, name)),
    el("td", {}, c.valid), el("td", {}, c.revoked), el("td", {}, c.expiring_7d), el("td", {}, c.expiring_30d)));
  const total = Object.values(o.profiles).reduce((a, c) => a + c.valid, 0);
  setView(
    el("h2", {}, "Fleet overview"),
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("div", { class: "n", id: "total-valid" }, total), "valid certificates"),
      el("div", { class: "card" }, el("div", { class: "n" }, el("a", { href: "#/pending" }, o.pending)), "pending requests"),
      el("div", { class: "card" }, el("div", { class: "n" }, o.expiring.length), "expiring within 30 days")),
    el("table", { id: "profiles" },
      el("thead", {}, el("tr", {}, ["Profile", "Valid", "Revoked", "Expiring ≤7d", "Expiring ≤30d"].map(h => el("th", {}, h)))),
      el("tbody", {}, rows)),
    el("h3", {}, "Expiring soon"), certTable(o.expiring),
    el("h3", {}, "Recent enrollments"), certTable(o.recent));
  try {
    const section = await charts();
    const anchor = document.getElementById("profiles");
    if (anchor) anchor.after(section);  // gone when the operator left the overview meanwhile
  } catch (e) { say("charts: " + e.message, true); }
}

async function certs(params) {
  const q = new URLSearchParams();
  for (const k of ["q", "profile", "state", "expiring_within", "cursor"]) if (params.get(k)) q.set(k, params.get(k));
  q.set("limit", "50");
  const page = await api("GET", "/certificates?" + q.toString());
  const form = el("form", { class: "filters", id: "cert-search", onsubmit: (e) => {
    e.preventDefault();
    const f = new URLSearchParams();
    for (const k of ["q", "profile", "state", "expiring_within"]) {
      const v = document.getElementById("f-" + k).value.trim();
      if (v) f.set(k, v);
    }
    location.hash = "#/certs?" + f.toString();
  } },
    el("div", {}, el("label", { for: "f-q" }, "Subject contains"), el("input", { id: "f-q", value: params.get("q") || "" })),
    el("div", {}, el("label", { for: "f-profile" }, "Profile"), el("input", { id: "f-profile", value: params.get("profile") || "", size: 10 })),
    el("div", {}, el("label", { for: "f-state" }, "State"), el("select", { id: "f-state" },
      ["", "valid", "revoked", "on_hold", "retired", "expired"].map(s => el("option", { value: s, selected: s === (params.get("state") || "") }, s || "any")))),
    el("div", {}, el("label", { for: "f-expiring_within" }, "Expiring within"), el("input", { id: "f-expiring_within", placeholder: "30d", size: 6, value: params.get("expiring_within") || "" })),
    el("button", { type: "submit", id: "search-btn" }, "Search"));
  const more = page.next_cursor ? el("a", { id: "next-page", href: "#/certs?" + (() => { const n = new URLSearchParams(q); n.set("cursor", page.next_cursor); n.delete("limit"); return n.toString(); })() }, "Next page →") : null;
  setView(el("h2", {}, "Certificates"), form, certTable(page.items), more);
}

async function certDetail(serial) {
  const c = await api("GET", "/certificates/" + encodeURIComponent(serial));
  const kv = [["Serial", c.serial], ["Subject", c.subject], ["SANs", (c.sans || []).join(", ") || "–"], ["State", c.state],
    ["Profile", c.profile], ["CA", c.ca], ["Issuer", c.issuer], ["Key", c.key_type], ["Not before", when(c.not_before)],
    ["Not after", when(c.not_after)], ["Issued", when(c.issued_at) + " via " + c.channel + " by " + c.requester],
    ["Revoked", c.revoked_at ? when(c.revoked_at) + " (" + c.revocation_reason + ")" : "–"],
    ["Renews", c.renews || "–"], ["SHA-256", c.sha256]];
  const actions = el("div", { class: "panel", id: "actions" });
  if (c.state === "valid" || c.state === "expired" || c.state === "on_hold" || c.state === "retired") {
    const exclude = c.state === "on_hold" ? "certificate_hold" : null;
    actions.append(el("h3", {}, c.state === "on_hold" ? "On hold: release or revoke for good" : "Revoke"),
      el("label", { for: "revoke-reason" }, "Reason"), reasonSelect("revoke-reason", exclude), " ",
      el("button", { type: "button", id: "revoke-btn", class: "danger", onclick: () => confirmRevoke(c) }, "Revoke…"));
    if (c.state === "on_hold") {
      actions.append(" ", el("button", { type: "button", id: "unhold-btn", class: "secondary", onclick: async () => {
        try { await api("POST", "/certificates/" + c.serial + "/unhold", {}); say("Released " + c.serial + " from hold."); route(); }
        catch (e) { say(e.message, true); }
      } }, "Release hold"));
    }
  } else {
    actions.append("This certificate is " + c.state.replace("_", " ") + "; nothing to do.");
  }
  setView(
    el("h2", {}, "Certificate ", el("span", { class: "mono" }, c.serial)),
    el("dl", { class: "kv", id: "cert-detail" }, kv.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k }, v ?? "–")])),
    c.device ? el("p", {}, "Device: ", el("a", { href: "#/device/" + c.device, class: "mono" }, c.device)) : null,
    actions,
    el("details", {}, el("summary", {}, "PEM"), el("pre", {}, c.pem || "")));
}

function confirmRevoke(c) {
  const reason = document.getElementById("revoke-reason").value;
  const panel = el("div", { class: "panel confirm", id: "confirm-panel" },
    el("p", {}, "Revoke certificate ", el("strong", { class: "mono" }, c.serial), " (", c.subject || "", ") with reason ",
      el("strong", {}, reason.replaceAll("_", " ")), "? " +
      (reason === "certificate_hold" ? "It can be released later." : "This cannot be undone.")),
    el("button", { type: "button", id: "revoke-confirm", class: "danger", onclick: async (e) => {
      e.target.disabled = true;
      try {
        const r = await api("POST", "/certificates/" + c.serial + "/revoke", { reason, ca: c.ca });
        say("Certificate " + r.serial + " is now " + r.state.replace("_", " ") + " (" + r.revocation_reason + ").");
        route();
      } catch (err) { say(err.message, true); e.target.disabled = false; }
    } }, "Confirm revocation"), " ",
    el("button", { type: "button", id: "revoke-cancel", class: "secondary", onclick: () => panel.remove() }, "Cancel"));
  const old = document.getElementById("confirm-panel");
  if (old) old.remove();
  document.getElementById("actions").append(panel);
}

async function devices(params) {
  const q = new URLSearchParams();
  for (const k of ["q", "profile", "cursor"]) if (params.get(k)) q.set(k, params.get(k));
  const page = await api("GET", "/devices?" + q.toString());
  const form = el("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const v = document.getElementById("d-q").value.trim();
    location.hash = "#/devices" + (v ? "?q=" + encodeURIComponent(v) : "");
  } }, el("div", {}, el("label", { for: "d-q" }, "Subject or SAN contains"), el("input", { id: "d-q", value: params.get("q") || "" })),
    el("button", { type: "submit" }, "Search"));
  const rows = page.items.map(d => el("tr", {},
    el("td", {}, el("a", { href: "#/device/" + d.device, class: "mono" }, d.device)), el("td", {}, d.subject),
    el("td", {}, d.sans.join(", ")), el("td", {}, d.profile), el("td", {}, d.active + " / " + d.certificates),
    el("td", {}, d.retired ? "retired" : "active"), el("td", {}, when(d.last_issued_at))));
  setView(el("h2", {}, "Devices"), form, rows.length ? el("table", {},
    el("thead", {}, el("tr", {}, ["Device", "Subject", "SANs", "Profile", "Valid / all", "State", "Last issued"].map(h => el("th", {}, h)))),
    el("tbody", {}, rows)) : el("p", {}, "None."),
    page.next_cursor ? el("a", { href: "#/devices?cursor=" + page.next_cursor + (params.get("q") ? "&q=" + encodeURIComponent(params.get("q")) : "") }, "Next page →") : null);
}

async function deviceDetail(id) {
  const d = await api("GET", "/devices/" + encodeURIComponent(id));
  const actions = el("div", { class: "panel" });
  if (!d.retired) {
    actions.append(el("h3", {}, "Retire this device"),
      el("p", {}, "Revokes all its certificates and refuses its future enrollments and renewals."),
      el("button", { type: "button", id: "retire-btn", class: "danger", onclick: (e) => {
        e.target.replaceWith(el("button", { type: "button", id: "retire-confirm", class: "danger", onclick: async () => {
          try { await api("POST", "/devices/" + d.device + "/retire", { reason: "cessation_of_operation" }); say("Device retired."); route(); }
          catch (err) { say(err.message, true); }
        } }, "Confirm: retire " + d.subject));
      } }, "Retire…"));
  } else {
    actions.append("Retired " + when(d.retired_at) + " by " + d.retired_by + " (" + d.retire_reason + ").");
  }
  setView(el("h2", {}, "Device ", el("span", { class: "mono" }, d.device)),
    el("dl", { class: "kv" }, [["Subject", d.subject], ["SANs", d.sans.join(", ") || "–"], ["Profile", d.profile],
      ["First seen", when(d.first_seen)]].map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    actions, el("h3", {}, "Certificates"), certTable(d.items), el("h3", {}, "History"), auditTable(d.history));
}

function auditTable(items) {
  if (!items.length) return el("p", {}, "None.");
  return el("table", { class: "audit" },
    el("thead", {}, el("tr", {}, ["Time", "Event", "OK", "Serial", "By", "Reason"].map(h => el("th", {}, h)))),
    el("tbody", {}, items.map(a => el("tr", {}, el("td", {}, when(a.at)), el("td", {}, a.event), el("td", {}, a.ok ? "yes" : "no"),
      el("td", { class: "mono" }, a.serial ? el("a", { href: "#/cert/" + a.serial }, a.serial) : "–"),
      el("td", {}, a.requester || "–"), el("td", {}, a.reason || "")))));
}

async function pending() {
  const page = await api("GET", "/pending");
  const rows = page.items.map(p => el("tr", { "data-id": p.id },
    el("td", {}, p.id), el("td", {}, p.subject || ""), el("td", {}, p.sans.join(", ")), el("td", {}, p.profile),
    el("td", {}, p.channel + " / " + p.requester), el("td", {}, when(p.created_at)),
    el("td", {},
      el("button", { type: "button", class: "approve", "data-id": p.id, onclick: () => decide(p, "approve") }, "Approve"), " ",
      el("button", { type: "button", class: "reject danger", "data-id": p.id, onclick: (e) => askRejectReason(p, e.currentTarget) }, "Reject…"))));
  setView(el("h2", {}, "Pending approvals"), rows.length ? el("table", { id: "pending" },
    el("thead", {}, el("tr", {}, ["#", "Subject", "SANs", "Profile", "Requested via / by", "Since", ""].map(h => el("th", {}, h)))),
    el("tbody", {}, rows)) : el("p", { id: "no-pending" }, "Nothing is waiting."));
}

async function decide(p, action, reason) {
  try {
    const r = await api("POST", "/pending/" + p.id + "/" + action, action === "reject" ? { reason: reason || "" } : {});
    say("Request " + r.id + " " + r.status + ".");
  } catch (e) { say(e.message, true); }
  await refreshPendingCount();
  route();
}

function askRejectReason(p, button) {
  const input = el("input", { id: "reject-reason-" + p.id, placeholder: "reason (optional)", size: 24 });
  const form = el("form", { class: "reject-form", onsubmit: (e) => { e.preventDefault(); decide(p, "reject", input.value.trim()); } },
    input, " ", el("button", { type: "submit", class: "danger", id: "reject-confirm-" + p.id }, "Confirm reject"), " ",
    el("button", { type: "button", class: "secondary", onclick: () => form.replaceWith(button) }, "Cancel"));
  button.replaceWith(form);
  input.focus();
}

async function audit(params) {
  const q = new URLSearchParams();
  for (const k of ["serial", "device", "event", "since", "until", "cursor"]) if (params.get(k)) q.set(k, params.get(k));
  const page = await api("GET", "/audit?" + q.toString());
  setView(el("h2", {}, "Audit trail"), auditTable(page.items),
    page.next_cursor ? el("a", { href: "#/audit?" + (() => { const n = new URLSearchParams(q); n.set("cursor", page.next_cursor); return n.toString(); })() }, "Older →") : null);
}

// --- one-time EST credentials: made in bulk, downloaded once as CSV, listed, revoked -------------------
async function credentials(params) {
  const all = params.get("all") === "1";
  const page = await api("GET", "/credentials" + (all ? "" : "?unused=1"));
  const profile = el("input", { id: "cred-profile", value: "factory", size: 12, required: true });
  const devices = el("textarea", { id: "cred-devices", rows: 5, cols: 30, placeholder: "one device serialNumber per line" });
  const bind = el("select", { id: "cred-bind" }, ["serialNumber", "CN"].map(b => el("option", { value: b }, b)));
  const ttl = el("input", { id: "cred-ttl", value: "7d", size: 6 });
  const uses = el("input", { id: "cred-uses", type: "number", min: 1, value: 1, size: 4 });
  const form = el("form", { id: "cred-form", class: "panel", onsubmit: async (e) => {
    e.preventDefault();
    const names = devices.value.split("\n").map(s => s.trim()).filter(Boolean);
    try {
      const csv = await createCredentialsCsv({ profile: profile.value.trim(), devices: names, bind: bind.value,
        ttl: ttl.value.trim(), uses: Number(uses.value) });
      const link = el("a", { id: "cred-download", href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })),
        download: "credentials-" + profile.value.trim() + ".csv" }, "Download the CSV again");
      link.click();
      say(names.length + " credential(s) made; the passwords are only in the downloaded CSV.");
      await credentials(params);
      document.getElementById("view").prepend(link);
    } catch (err) { say(err.message, true); }
  } },
    el("h3", {}, "New one-time EST credentials"),
    el("label", { for: "cred-profile" }, "Profile "), profile, " ",
    el("label", { for: "cred-bind" }, "Bound to subject "), bind, " ",
    el("label", { for: "cred-ttl" }, "Valid for "), ttl, " ",
    el("label", { for: "cred-uses" }, "Uses "), uses, el("br"),
    el("label", { for: "cred-devices" }, "Devices"), el("br"), devices, el("br"),
    el("button", { type: "submit", id: "cred-create" }, "Create and download CSV"));
  const rows = page.items.map(c => el("tr", { "data-id": c.id },
    el("td", { class: "mono" }, c.id), el("td", {}, c.profile), el("td", {}, c.bind + "=" + c.device),
    el("td", {}, c.revoked_at ? "revoked" : c.uses_left + "/" + c.uses), el("td", {}, when(c.expires_at)),
    el("td", {}, c.revoked_at || !c.uses_left ? "" : el("button", { type: "button", class: "danger revoke-cred",
      "data-id": c.id, onclick: async () => {
        try { await api("POST", "/credentials/" + encodeURIComponent(c.id) + "/revoke", {}); say("Credential " + c.id + " revoked."); route(); }
        catch (err) { say(err.message, true); }
      } }, "Revoke"))));
  setView(el("h2", {}, "Enrollment credentials"), form,
    el("p", {}, el("a", { href: all ? "#/credentials" : "#/credentials?all=1", id: "cred-toggle" },
      all ? "Show only usable ones" : "Show all")),
    rows.length ? el("table", { id: "credentials" },
      el("thead", {}, el("tr", {}, ["Id (user)", "Profile", "Device", "Uses left", "Expires", ""].map(h => el("th", {}, h)))),
      el("tbody", {}, rows)) : el("p", { id: "no-credentials" }, "None."));
}

async function createCredentialsCsv(body) {
  const headers = { "Accept": "text/csv", "Content-Type": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch(API + "/credentials?format=csv", { method: "POST", headers, credentials: "same-origin",
    body: JSON.stringify(body) });
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    throw new ApiError(resp.status, (data && data.error) || ("HTTP " + resp.status));
  }
  return await resp.text();
}

// --- routing and sign-in --------------------------------------------------------------------------------
async function refreshPendingCount() {
  try {
    const h = await api("GET", "/health");
    document.getElementById("pending-count").textContent = h.pending ? String(h.pending) : "";
    document.getElementById("who").textContent = "signed in as " + h.admin;
  } catch (e) { /* shown by the view */ }
}

async function route() {
  const hash = location.hash || "#/overview";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
  try {
    if (path.startsWith("/cert/")) await certDetail(decodeURIComponent(path.slice(6)));
    else if (path === "/certs") await certs(params);
    else if (path.startsWith("/device/")) await deviceDetail(decodeURIComponent(path.slice(8)));
    else if (path === "/devices") await devices(params);
    else if (path === "/pending") await pending();
    else if (path === "/audit") await audit(params);
    else if (path === "/credentials") await credentials(params);
    else await overview();
    document.body.dataset.view = path;
  } catch (e) {
    if (e.status === 401) return showLogin("Please sign in.");
    say(e.message, true);
  }
}

function showLogin(text) {
  document.getElementById("nav").hidden = true;
  document.getElementById("login").hidden = false;
  setView();
  if (text) say(text, false);
}

async function start() {
  try {
    await api("GET", "/health");
  } catch (e) {
    if (e.status === 401) return showLogin(token ? "The token was not accepted." : "");
    return say(e.message, true);
  }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  await refreshPendingCount();
  await route();
}

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("enroll-admin-token", token);
  document.getElementById("token").value = "";
  say("");
  start();
});
document.getElementById("logout").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem("enroll-admin-token");
  showLogin("Signed out.");
});
window.addEventListener("hashchange", () => { say(""); route(); });
start();
