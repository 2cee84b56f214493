// The proxy's web UI: login, nodes, a terminal, active sessions, recordings.
// Plain DOM code: a handful of pages do not need a framework, and every element a person or a
// test uses carries a stable data-testid.
import "@xterm/xterm/css/xterm.css";
import "asciinema-player/dist/bundle/asciinema-player.css";
import "./app.css";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { WebLinksAddon } from "@xterm/addon-web-links";
import * as AsciinemaPlayer from "asciinema-player";

interface Session {
  user: string;
  csrf_token: string;
  logins: string[];
  roles: string[];
  expires: number;
}

interface NodeInfo {
  id: string;
  hostname: string;
  addr: string;
  labels: Record<string, string>;
  logins: string[];
  tunnel?: boolean;
}

const TUNNEL = "⟵ Tunnel";

class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

let session: Session | null = null;
let cleanup: (() => void) | null = null;

const main = document.getElementById("main") as HTMLElement;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") el.textContent = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const message = data?.error?.message ?? `${method} ${path}: HTTP ${res.status}`;
    throw new ApiError(res.status, message);
  }
  return data as T;
}

function alertBox(): HTMLElement {
  return h("p", { role: "alert", class: "error", "data-testid": "error" });
}

function showError(box: HTMLElement, err: unknown): void {
  box.textContent = err instanceof Error ? err.message : String(err);
  if (err instanceof ApiError && err.status === 401) {
    session = null;
    updateNav();
    box.append(" ", h("a", { href: "/web/login", "data-testid": "relogin", text: "Log in" }));
  }
}

function updateNav(): void {
  const nav = document.getElementById("nav") as HTMLElement;
  nav.hidden = session === null;
  (document.getElementById("whoami") as HTMLElement).textContent = session ? `Logged in as ${session.user}` : "";
}

function go(path: string): void {
  history.pushState(null, "", path);
  void route();
}

function page(title: string, ...children: (Node | string)[]): void {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  document.title = `${title} · Teleport`;
  main.replaceChildren(h("h1", { text: title }), ...children);
}

// ---------------------------------------------------------------------------- login

function loginPage(): void {
  const error = alertBox();
  const field = (id: string, label: string, type: string, autocomplete: string) =>
    h(
      "div",
      { class: "field" },
      h("label", { for: id, text: label }),
      h("input", { id, name: id, type, autocomplete, required: "", "data-testid": `login-${id}` }),
    );
  const form = h(
    "form",
    { "aria-label": "Log in", "data-testid": "login-form" },
    field("username", "User name", "text", "username"),
    field("password", "Password", "password", "current-password"),
    field("otp", "One-time code", "text", "one-time-code"),
    h("button", { type: "submit", "data-testid": "login-submit", text: "Log in" }),
    error,
  );
  (form.querySelector("#otp") as HTMLInputElement).inputMode = "numeric";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = (id: string) => (form.querySelector(`#${id}`) as HTMLInputElement).value;
    error.textContent = "";
    try {
      session = await api<Session>("POST", "/web/api/login", {
        user: value("username"),
        password: value("password"),
        otp: value("otp"),
      });
      updateNav();
      go("/web/nodes");
    } catch (err) {
      showError(error, err);
    }
  });
  page("Log in to Teleport", form);
  (form.querySelector("#username") as HTMLInputElement).focus();
}

// ---------------------------------------------------------------------------- sign-up

async function signupPage(): Promise<void> {
  // The invitation's token is the link's fragment: the browser never sends it in a request line.
  const token = location.hash.slice(1);
  const error = alertBox();
  page("Sign up", error);
  let info: { user: string; otpauth_uri: string; qr_svg: string };
  try {
    info = await api("POST", "/web/api/signup/info", { token });
  } catch (err) {
    showError(error, err);
    return;
  }
  const secret = new URL(info.otpauth_uri).searchParams.get("secret") ?? "";
  const field = (id: string, label: string, type: string, autocomplete: string) =>
    h(
      "div",
      { class: "field" },
      h("label", { for: id, text: label }),
      h("input", { id, name: id, type, autocomplete, required: "", "data-testid": `signup-${id}` }),
    );
  const form = h(
    "form",
    { "aria-label": "Sign up", "data-testid": "signup-form" },
    h("p", { text: `Choose a password for ${info.user} and enrol your authenticator app.` }),
    field("password", "Password", "password", "new-password"),
    field("confirm", "Confirm password", "password", "new-password"),
    h("p", { text: "Scan this QR code with your authenticator app (or enter the secret below):" }),
    h("img", { src: info.qr_svg, alt: "QR code of your one-time code secret", "data-testid": "signup-qr" }),
    h("p", {}, "Secret: ", h("code", { "data-testid": "signup-secret", text: secret })),
    field("otp", "One-time code from the app", "text", "one-time-code"),
    h("button", { type: "submit", "data-testid": "signup-submit", text: "Sign up" }),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = (id: string) => (form.querySelector(`#${id}`) as HTMLInputElement).value;
    error.textContent = "";
    if (value("password") !== value("confirm")) {
      error.textContent = "The passwords differ: type the same password twice.";
      return;
    }
    try {
      await api("POST", "/web/api/signup", { token, password: value("password"), otp: value("otp") });
      history.replaceState(null, "", "/web/login");
      await route();
      const done = h("p", { role: "status", "data-testid": "signup-done", text: `Signed up as ${info.user}: log in.` });
      main.insertBefore(done, main.children[1] ?? null);
    } catch (err) {
      showError(error, err);
    }
  });
  main.append(form);
}

// ---------------------------------------------------------------------------- nodes

function labelText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}

function matchesLabels(node: NodeInfo, filter: string): boolean {
  return filter
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .every((pair) => {
      const [k, v] = pair.split("=", 2);
      return v === undefined ? k in node.labels : node.labels[k] === v;
    });
}

async function nodesPage(): Promise<void> {
  const error = alertBox();
  const search = h("input", { id: "search", type: "search", "data-testid": "node-search" });
  const labels = h("input", { id: "labels", type: "text", placeholder: "env=prod", "data-testid": "label-filter" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { "data-testid": "node-table" },
    h("caption", { text: "Nodes you may reach" }),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Name", "Address", "Labels", "Login", ""].map((t) => h("th", { scope: "col", text: t })),
      ),
    ),
    tbody,
  );
  page(
    "Nodes",
    h(
      "div",
      { class: "filters" },
      h("div", { class: "field" }, h("label", { for: "search", text: "Search" }), search),
      h("div", { class: "field" }, h("label", { for: "labels", text: "Label filter" }), labels),
    ),
    error,
    table,
  );
  let nodes: NodeInfo[] = [];
  const render = () => {
    const q = search.value.trim().toLowerCase();
    tbody.replaceChildren(
      ...nodes
        .filter((n) => !q || `${n.hostname} ${n.addr} ${labelText(n.labels)}`.toLowerCase().includes(q))
        .filter((n) => matchesLabels(n, labels.value))
        .map((n) => {
          const selectId = `login-${n.id}`;
          const select = h(
            "select",
            { id: selectId, "aria-label": `Login on ${n.hostname}`, "data-testid": "node-login" },
            ...n.logins.map((l) => h("option", { value: l, text: l })),
          );
          const connect = h("button", {
            type: "button",
            "data-testid": "node-connect",
            text: "Connect",
            "aria-label": `Connect to ${n.hostname}`,
          });
          connect.addEventListener("click", () =>
            go(
              `/web/terminal?${new URLSearchParams({ node: n.id, name: n.hostname, login: select.value })}`,
            ),
          );
          return h(
            "tr",
            { "data-testid": "node-row", "data-node-name": n.hostname },
            h("td", { text: n.hostname }),
            h("td", { text: n.tunnel || n.addr === TUNNEL ? TUNNEL : n.addr }),
            h("td", { text: labelText(n.labels) }),
            h("td", {}, select),
            h("td", {}, connect),
          );
        }),
    );
  };
  search.addEventListener("input", render);
  labels.addEventListener("input", render);
  try {
    nodes = await api<NodeInfo[]>("GET", "/web/api/nodes");
    render();
  } catch (err) {
    showError(error, err);
  }
}

// ---------------------------------------------------------------------------- terminal

function terminalPage(): void {
  const params = new URLSearchParams(location.search);
  const node = params.get("node") ?? "";
  const login = params.get("login") ?? "";
  const name = params.get("name") || node;
  // Watching a session in progress (observer mode): read-only; the proxy and the node drop input.
  const join = params.get("join") ?? "";
  const what = join ? `session ${join} on ${name} (read-only)` : `${login}@${name}`;
  const status = h("p", { role: "status", "data-testid": "terminal-status", text: `Connecting to ${what}…` });
  const box = h("div", { class: "terminal", "data-testid": "terminal" });
  if (join) box.setAttribute("data-readonly", "true");
  page(join ? `Watching: ${what}` : `Terminal: ${what}`, status, box);

  const term = new Terminal({ cursorBlink: !join, disableStdin: !!join, convertEol: false, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.loadAddon(new WebLinksAddon());
  term.open(box);
  fit.fit();
  term.focus();

  const q = new URLSearchParams(
    join ? { node, join } : { node, login, cols: String(term.cols), rows: String(term.rows) },
  );
  const ws = new WebSocket(`wss://${location.host}/web/api/terminal?${q}`);
  ws.binaryType = "arraybuffer";
  let ended = false;
  ws.onopen = () => {
    status.textContent = join ? `Watching ${what}` : `Connected to ${what}`;
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data) as { type: string; message: string };
      ended = true;
      status.textContent = msg.message;
      status.className = msg.type === "error" ? "error" : "";
      if (msg.type === "error") status.setAttribute("data-testid", "terminal-error");
      return;
    }
    term.write(new Uint8Array(ev.data as ArrayBuffer));
  };
  ws.onclose = (ev) => {
    if (!ended) {
      status.textContent = ev.reason ? `Disconnected: ${ev.reason}` : "Disconnected";
      status.className = "error";
    }
  };
  const send = (msg: unknown) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  };
  term.onData((data) => send({ type: "input", data }));
  term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  const observer = new ResizeObserver(() => fit.fit());
  observer.observe(box);
  cleanup = () => {
    observer.disconnect();
    ws.close();
    term.dispose();
  };
}

// ---------------------------------------------------------------------------- sessions, recordings

function tablePage(
  title: string,
  columns: string[],
  rows: Record<string, unknown>[],
  testid: string,
  cells: (r: Record<string, unknown>) => (Node | string)[],
): HTMLTableElement {
  return h(
    "table",
    { "data-testid": testid.replace(/-row$/, "-table") },
    h("caption", { text: title }),
    h("thead", {}, h("tr", {}, ...columns.map((t) => h("th", { scope: "col", text: t })))),
    h(
      "tbody",
      {},
      ...rows.map((r) => h("tr", { "data-testid": testid }, ...cells(r).map((c) => h("td", {}, c)))),
    ),
  );
}

async function sessionsPage(): Promise<void> {
  const error = alertBox();
  page("Active sessions", error);
  try {
    const rows = await api<Record<string, unknown>[]>("GET", "/web/api/sessions");
    main.append(
      tablePage("Sessions in progress", ["User", "Login", "Node", "Since", "Watch"], rows, "session-row", (r) => {
        const node = String(r.node ?? r.nodename ?? r.server_hostname ?? r.server_id ?? "");
        const watch = h("button", {
          type: "button",
          "data-testid": "session-join",
          text: "Join",
          "aria-label": `Join (watch, read-only) the session of ${String(r.user ?? "")} on ${node}`,
        });
        watch.addEventListener("click", () =>
          go(
            `/web/terminal?${new URLSearchParams({
              join: String(r.id ?? r.session_id ?? ""),
              node: String(r.host_uuid ?? r.server_id ?? node),
              name: node,
            })}`,
          ),
        );
        return [String(r.user ?? ""), String(r.login ?? ""), node, String(r.started ?? ""), watch];
      }),
    );
  } catch (err) {
    showError(error, err);
  }
}

async function recordingsPage(): Promise<void> {
  const error = alertBox();
  const filter = h("input", { id: "rec-filter", type: "search", "data-testid": "recording-filter" });
  const holder = h("div");
  const playerBox = h("section", { "aria-label": "Player" });
  page(
    "Recordings",
    h("div", { class: "field" }, h("label", { for: "rec-filter", text: "Filter by user, login or node" }), filter),
    error,
    holder,
    playerBox,
  );
  let rows: Record<string, unknown>[] = [];
  const play = async (id: string) => {
    try {
      const rec = await api<{ cast: string }>("GET", `/web/api/recordings/${encodeURIComponent(id)}`);
      const el = h("div", { "data-testid": "player", class: "player" });
      playerBox.replaceChildren(h("h2", { text: `Session ${id}` }), el);
      AsciinemaPlayer.create({ data: rec.cast }, el, { controls: true, autoPlay: true, fit: "width" });
    } catch (err) {
      showError(error, err);
    }
  };
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = rows.filter(
      (r) => !q || `${r.user ?? ""} ${r.login ?? ""} ${r.node ?? ""}`.toLowerCase().includes(q),
    );
    holder.replaceChildren(
      tablePage("Recorded sessions", ["User", "Login", "Node", "Started", ""], shown, "recording-row", (r) => {
        const id = String(r.session_id ?? "");
        const button = h("button", { type: "button", "data-testid": "recording-play", text: "Play" });
        button.setAttribute("aria-label", `Play session ${id}`);
        button.addEventListener("click", () => void play(id));
        return [
          String(r.user ?? ""),
          String(r.login ?? ""),
          String(r.node ?? r.server_hostname ?? ""),
          String(r.started ?? r.timestamp ?? ""),
          button,
        ];
      }),
    );
  };
  filter.addEventListener("input", render);
  try {
    rows = await api<Record<string, unknown>[]>("GET", "/web/api/recordings");
    render();
  } catch (err) {
    showError(error, err);
  }
}

async function auditPage(): Promise<void> {
  const error = alertBox();
  const params = new URLSearchParams(location.search);
  const input = (id: string, label: string, value: string, placeholder: string) =>
    h(
      "div",
      { class: "field" },
      h("label", { for: id, text: label }),
      h("input", { id, name: id, type: "text", value, placeholder, "data-testid": `audit-${id}` }),
    );
  const form = h(
    "form",
    { class: "filters", "aria-label": "Audit log filters" },
    input("type", "Event types", params.get("type") ?? "", "user.login,session."),
    input("user", "User", params.get("user") ?? "", "alice"),
    input("since", "Since", params.get("since") ?? "1h", "1h"),
    h("button", { type: "submit", "data-testid": "audit-apply", text: "Show" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const id of ["type", "user", "since"]) {
      const v = (form.querySelector(`#${id}`) as HTMLInputElement).value.trim();
      if (v) q.set(id, v);
    }
    go(`/web/audit?${q}`);
  });
  page("Audit log", form, error);
  try {
    const rows = await api<Record<string, unknown>[]>("GET", `/web/api/audit?${params}`);
    main.append(
      tablePage("Events, oldest first", ["Time", "Event", "Code", "User", "Login", "Details"], rows, "audit-row", (r) => [
        String(r.time ?? "").slice(0, 19).replace("T", " "),
        String(r.event ?? ""),
        String(r.code ?? ""),
        String(r.user ?? ""),
        String(r.login ?? ""),
        String(r.reason ?? r.session_id ?? r.remote_addr ?? ""),
      ]),
    );
  } catch (err) {
    showError(error, err);
  }
}

// ---------------------------------------------------------------------------- routing

async function route(): Promise<void> {
  if (location.pathname === "/web/signup") {
    await signupPage();
    return;
  }
  if (session === null && location.pathname !== "/web/login") {
    try {
      session = await api<Session>("GET", "/web/api/session");
    } catch {
      session = null;
    }
  }
  updateNav();
  const path = location.pathname;
  if (session === null || path === "/web/login") {
    if (path !== "/web/login") history.replaceState(null, "", "/web/login");
    loginPage();
  } else if (path === "/web/terminal") terminalPage();
  else if (path === "/web/sessions") await sessionsPage();
  else if (path === "/web/recordings") await recordingsPage();
  else if (path === "/web/audit") await auditPage();
  else {
    if (path !== "/web/nodes") history.replaceState(null, "", "/web/nodes");
    await nodesPage();
  }
}

document.addEventListener("click", (ev) => {
  const a = (ev.target as HTMLElement).closest("a");
  if (a && a.origin === location.origin && a.pathname.startsWith("/web/")) {
    ev.preventDefault();
    go(a.pathname + a.search);
  }
});
window.addEventListener("popstate", () => void route());
(document.getElementById("logout") as HTMLButtonElement).addEventListener("click", async () => {
  try {
    await api("POST", "/web/api/logout");
  } catch {
    // logged out or expired already: either way, back to the login form
  }
  session = null;
  go("/web/login");
});
void route();
