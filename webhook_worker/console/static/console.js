// The ops console's only script (CSP: script-src 'self'). Three jobs:
// 1. the event page's Replay posts the form with fetch and polls the event's status until
//    the worker is done, then swaps in the server's fresh summary, ledger and replays;
// 2. a bulk replay's result page polls its progress;
// 3. copy buttons for ids and the raw payload.
"use strict";

const FINAL = new Set(["completed", "failed", "ignored", "waiting"]);

function text(el, value) { if (el) el.textContent = value === null || value === undefined || value === "" ? "\u2014" : String(value); }

// After a replay the server renders the event again: the same formats as a fresh page.
async function refreshEvent() {
  const response = await fetch(location.href, { credentials: "same-origin" });
  if (!response.ok) return false;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of ["summary", "ledger-section", "replays-section"]) {
    const now = document.getElementById(id); const next = fresh.getElementById(id);
    if (now && next) now.replaceWith(document.adoptNode(next));
  }
  const force = fresh.querySelector("#replay label");
  const form = document.getElementById("replay");
  if (form && force && !form.querySelector("label")) form.querySelector("button").before(document.adoptNode(force));
  return true;
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
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const statusUrl = document.getElementById("summary").dataset.statusUrl;
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
      }, (s) => FINAL.has(s.processing_status), 60000);
      await refreshEvent();
      text(message, finished ? "Done." : "Still queued: is a worker running? The page updates on reload.");
    } catch (error) {
      text(message, "Replay failed: " + error);
    } finally {
      button.disabled = false;
    }
  });
}

// Copy buttons: an id (data-copy) or a whole text (data-copy-from, an element's id).
async function copyText(value) {
  try { await navigator.clipboard.writeText(value); return true; } catch (error) {
    const area = document.createElement("textarea"); area.value = value; document.body.append(area);
    area.select(); const done = document.execCommand("copy"); area.remove(); return done;
  }
}

function setupCopy() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.copy");
    if (!button) return;
    event.preventDefault();
    const from = button.dataset.copyFrom ? document.getElementById(button.dataset.copyFrom) : null;
    const value = from ? from.value : button.dataset.copy;
    const label = button.textContent;
    button.textContent = (await copyText(value)) ? "copied" : "copy failed";
    setTimeout(() => { button.textContent = label; }, 1500);
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
  setupCopy();
  const form = document.querySelector("form[data-replay]");
  if (form) setupReplay(form);
  const box = document.getElementById("progress");
  if (box) setupProgress(box);
});
