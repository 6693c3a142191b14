// The mcp2p status page: polls the node's JSON API and fills in the tables.
// Every string from the node (file names, addresses, errors: remote peers
// choose some of them) is written with textContent, never as HTML.
"use strict";

const POLL_MS = 1500;
const OPTIONS = { credentials: "same-origin", headers: { "X-MCP2P": "1" }, cache: "no-store" };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function bits(n) {
  if (!n) return "0 bit/s";
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

function packets(c) {
  if (!c || c.packets === undefined) return "";
  const parts = [c.packets + " received"];
  for (const k of ["lost", "duplicate", "forged", "bad_pieces"]) {
    if (c[k]) parts.push(c[k] + " " + k.replace("_", " "));
  }
  return parts.join(", ");
}

function short(id, n) { return id ? String(id).slice(0, n || 12) : "?"; }

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(0) + " s";
  return (s / 60).toFixed(0) + " min";
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function td(content, cls) {
  const cell = el("td", null, cls);
  if (content instanceof Node) cell.appendChild(content); else cell.textContent = String(content);
  return cell;
}

function fill(id, rows, emptyId) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows);
  if (emptyId) document.getElementById(emptyId).classList.toggle("hidden", rows.length > 0);
}

function progressCell(t) {
  const cell = el("td");
  const bar = document.createElement("progress");
  if (t.total) {
    bar.max = t.total;
    bar.value = Math.min(t.bytes || 0, t.total);
  }
  cell.appendChild(bar);
  const pct = t.total ? " " + Math.floor((100 * (t.bytes || 0)) / t.total) + "%" : "";
  cell.appendChild(el("span", " " + bytes(t.bytes) + " / " + bytes(t.total) + pct, "meta"));
  return cell;
}

function showTransfers(data) {
  fill("transfers", data.transfers.map((t) => {
    const sources = (t.sources || []).map((s) =>
      short(s.node) + " @ " + s.address + (s.distance ? " (" + plural(s.distance, "hop") + ")" : "") +
      " " + s.mode + ", " + s.state).join("; ");
    const state = td(t.state + (t.state === "failed" && t.result ? ": " + t.result : ""),
      "state-" + t.state);
    const tr = row([td(t.id, "num"), td(t.name || t.target), state, progressCell(t),
      td(t.state === "running" ? bytes(Math.round(t.rate || 0)) + "/s" : ""),
      td(packets(t.counters)), td(sources)]);
    tr.dataset.transfer = String(t.id);
    return tr;
  }), "transfers-empty");
}

function showOverview(o) {
  document.getElementById("node-id").textContent = o.node_id;
  document.getElementById("version").textContent = o.version;
  document.getElementById("interface").textContent = o.interface;
  document.title = "mcp2p " + short(o.node_id);
  document.getElementById("shares-summary").textContent =
    o.shares.files + " files, " + bytes(o.shares.bytes);
  fill("shares", o.shares.list.map((f) =>
    row([td(f.name), td(bytes(f.size), "num"), td(short(f.content_id, 16), "mono")])),
  "shares-empty");
  fill("sessions", o.sessions.map((s) => {
    const cns = s.subscribers.map((c) => short(c.node_id) + (c.address ? " @ " + c.address : ""));
    if (s.subscriber_count > cns.length) cns.push("… " + s.subscriber_count + " in all");
    return row([td(s.session_id, "mono"), td(s.name || "?"), td(s.mode), td(s.destination),
      td(s.state), td(bits(s.rate), "num"), td(bytes(s.bytes), "num"), td(cns.join(", "))]);
  }), "sessions-empty");
  fill("peers", o.peers.map((p) => row([td(short(p.node_id), "mono"), td(p.address),
    td(p.distance === null ? "?" : p.distance, "num"), td(seconds(p.rtt), "num"),
    td(p.files, "num"), td(p.method), td(p.age === null ? "" : seconds(p.age) + " ago")])),
  "peers-empty");
  const items = [];
  const walk = (prefix, obj) => {
    for (const [k, v] of Object.entries(obj)) {
      const name = prefix ? prefix + "." + k : k;
      if (v !== null && typeof v === "object") walk(name, v);
      else if (typeof v === "number") {
        const div = el("div");
        div.appendChild(el("span", name));
        div.appendChild(el("span", Number.isInteger(v) ? v : v.toFixed(3)));
        items.push(div);
      }
    }
  };
  walk("", o.counters);
  document.getElementById("counters").replaceChildren(...items);
}

async function get(path) {
  const response = await fetch(path, OPTIONS);
  if (!response.ok) {
    let why = "";
    try { why = (await response.json()).error || ""; } catch (e) { /* not JSON */ }
    throw new Error(path + ": HTTP " + response.status + (why ? " (" + why + ")" : ""));
  }
  return response.json();
}

let busy = false;

async function poll() {
  if (busy) return;
  busy = true;
  const updated = document.getElementById("updated");
  try {
    const [o, t] = await Promise.all([get("/api/overview"), get("/api/transfers")]);
    showOverview(o);
    showTransfers(t);
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    updated.className = "state";
  } catch (e) {
    updated.textContent = "not answering: " + e.message;
    updated.className = "state-error";
  } finally {
    busy = false;
  }
}

poll();
setInterval(poll, POLL_MS);
