// The ops console's only script (CSP: script-src 'self'). Two jobs:
// 1. the event page's Replay posts the form with fetch and polls the event's status until
//    the worker is done, updating status, error and ledger rows without a reload;
// 2. a bulk replay's result page polls its progress.
"use strict";

const FINAL = new Set(["completed", "failed", "ignored", "waiting"]);

function text(el, value) { if (el) el.textContent = value === null || value === undefined || value === "" ? "\u2014" : String(value); }

function renderLedger(rows) {
  const body = document.querySelector("#ledger tbody");
  if (!body) return;
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow(); tr.className = "none";
    const td = tr.insertCell(); td.colSpan = 7; td.className = "muted"; td.textContent = "No ledger row.";
    return;
  }
  for (const t of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = t.id;
    const user = tr.insertCell(); const a = document.createElement("a");
    a.href = "/users/" + encodeURIComponent(String(t.user_id)); a.textContent = t.user_id; user.append(a);
    tr.insertCell().textContent = t.transaction_type;
    const amount = tr.insertCell(); amount.className = "n"; amount.textContent = t.amount;
    const after = tr.insertCell(); after.className = "n"; after.textContent = t.balance_after;
    const session = tr.insertCell(); const code = document.createElement("code"); code.textContent = t.checkout_session_id || ""; session.append(code);
    tr.insertCell().textContent = t.created_at || "";
  }
}

async function poll(url, apply, done, deadlineMs) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.ok) {
      const data = await response.json();
      apply(data);
      if (done(data)) return true;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return false;
}

function setupReplay(form) {
  const message = document.getElementById("replay-message");
  const statusUrl = document.getElementById("event").dataset.statusUrl;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button"); button.disabled = true;
    text(message, "Replaying\u2026");
    try {
      const response = await fetch(form.action, {
        method: "POST", credentials: "same-origin",
        headers: { Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(form)),
      });
      const data = await response.json();
      if (!response.ok) {
        const reason = data.error || (data.skipped && data.skipped.length ? data.skipped[0].reason : "refused");
        text(message, "Not replayed: " + reason); return;
      }
      text(message, "Replayed; waiting for the worker\u2026");
      const finished = await poll(statusUrl, (s) => {
        const badge = document.getElementById("status");
        badge.textContent = s.processing_status; badge.className = "badge st-" + s.processing_status;
        text(document.getElementById("reason"), s.status_reason);
        text(document.getElementById("attempts"), s.attempts);
        text(document.getElementById("error"), s.error_message);
        text(document.getElementById("processed"), s.processed_at);
        renderLedger(s.ledger);
      }, (s) => FINAL.has(s.processing_status), 60000);
      text(message, finished ? "Done." : "Still queued: is a worker running? The page updates on reload.");
    } catch (error) {
      text(message, "Replay failed: " + error);
    } finally {
      button.disabled = false;
    }
  });
}

function setupProgress(box) {
  const bar = document.getElementById("progress-bar");
  const label = document.getElementById("progress-text");
  const list = document.getElementById("progress-statuses");
  poll(box.dataset.progressUrl, (p) => {
    bar.max = p.count; bar.value = p.done;
    label.textContent = p.done + " of " + p.count + " processed";
    list.replaceChildren();
    for (const [status, n] of Object.entries(p.by_status)) {
      const li = document.createElement("li"); const badge = document.createElement("span");
      badge.className = "badge st-" + status; badge.textContent = status; li.append(badge, " " + n); list.append(li);
    }
  }, (p) => p.pending === 0, 600000);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-replay]");
  if (form) setupReplay(form);
  const box = document.getElementById("progress");
  if (box) setupProgress(box);
});
