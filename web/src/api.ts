// The dashboard talks to the public API only, as any client would: a
// bearer token from the login (refreshed before it expires, and once more
// on a 401) or a pasted API key. The API decides every permission; the
// UI only hides what `/auth/me` says would be refused.

export type Credentials =
  | { kind: 'token'; access: string; refresh: string; expiresAt: number }
  | { kind: 'key'; key: string };

export interface Me {
  name: string;
  kind: string;
  tenant: string;
  roles: string[];
  permissions: string[];
  scoped: { root: string; relationships: string[]; permissions: string[] }[];
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public details?: any,
  ) {
    super(message);
  }
}

const STORE_KEY = 'twinhub.credentials';
let creds: Credentials | null = load();
let refreshing: Promise<boolean> | null = null;
let refreshTimer: number | undefined;
const authListeners = new Set<() => void>();

function load(): Credentials | null {
  try {
    const raw = localStorage.getItem(STORE_KEY);
    return raw ? (JSON.parse(raw) as Credentials) : null;
  } catch {
    return null;
  }
}

function save(c: Credentials | null) {
  creds = c;
  if (c) localStorage.setItem(STORE_KEY, JSON.stringify(c));
  else localStorage.removeItem(STORE_KEY);
  scheduleRefresh();
  authListeners.forEach((f) => f());
}

export function onAuthChange(f: () => void): () => void {
  authListeners.add(f);
  return () => authListeners.delete(f);
}

export function signedIn(): boolean {
  return creds !== null;
}

function tokenCreds(t: { access_token: string; refresh_token: string; expires_in: number }): Credentials {
  return {
    kind: 'token',
    access: t.access_token,
    refresh: t.refresh_token,
    expiresAt: Date.now() + t.expires_in * 1000,
  };
}

export async function login(username: string, password: string): Promise<void> {
  const r = await fetch('/api/v1/auth/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  if (!r.ok) throw await toError(r);
  save(tokenCreds(await r.json()));
}

/** An API key is checked by asking who it is before it is kept. */
export async function useApiKey(key: string): Promise<void> {
  const r = await fetch('/api/v1/auth/me', { headers: { authorization: `Bearer ${key}` } });
  if (!r.ok) throw await toError(r);
  save({ kind: 'key', key });
}

export async function logout(): Promise<void> {
  const c = creds;
  if (c?.kind === 'token') {
    await fetch('/api/v1/auth/logout', {
      method: 'POST',
      headers: { authorization: `Bearer ${c.access}` },
    }).catch(() => undefined);
  }
  save(null);
}

/** Renews the access token; single flight, false when the session is over. */
async function refresh(): Promise<boolean> {
  const c = creds;
  if (c?.kind !== 'token') return false;
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const r = await fetch('/api/v1/auth/refresh', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refresh_token: c.refresh }),
        });
        if (!r.ok) {
          save(null);
          return false;
        }
        save(tokenCreds(await r.json()));
        return true;
      } catch {
        return false;
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

function scheduleRefresh() {
  if (refreshTimer !== undefined) clearTimeout(refreshTimer);
  refreshTimer = undefined;
  const c = creds;
  if (c?.kind !== 'token') return;
  // Renew at 80 % of the token's life so requests never meet an expiry.
  const wait = Math.max(1000, (c.expiresAt - Date.now()) * 0.8);
  refreshTimer = window.setTimeout(() => void refresh(), wait);
}
scheduleRefresh();

export function authHeader(): Record<string, string> {
  const c = creds;
  if (!c) return {};
  return { authorization: `Bearer ${c.kind === 'token' ? c.access : c.key}` };
}

async function toError(r: Response): Promise<ApiError> {
  try {
    const body = await r.json();
    return new ApiError(r.status, body?.error?.code ?? 'error', body?.error?.message ?? r.statusText, body?.error?.details);
  } catch {
    return new ApiError(r.status, 'error', r.statusText || `HTTP ${r.status}`);
  }
}

export async function request<T = any>(
  method: string,
  path: string,
  body?: unknown,
  init: RequestInit = {},
): Promise<T> {
  const send = () => {
    const headers: Record<string, string> = { ...authHeader() };
    let payload: BodyInit | undefined;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    return fetch(path, { ...init, method, headers, body: payload });
  };
  let r = await send();
  if (r.status === 401 && creds?.kind === 'token' && (await refresh())) r = await send();
  if (r.status === 401) {
    save(null);
  }
  if (!r.ok) throw await toError(r);
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

export const get = <T = any>(path: string, init?: RequestInit) => request<T>('GET', path, undefined, init);
export const post = <T = any>(path: string, body?: unknown) => request<T>('POST', path, body);
export const patch = <T = any>(path: string, body?: unknown) => request<T>('PATCH', path, body);
export const put = <T = any>(path: string, body?: unknown) => request<T>('PUT', path, body);
export const del = <T = any>(path: string) => request<T>('DELETE', path);

export function enc(s: string): string {
  return encodeURIComponent(s);
}

/** Every page of an `{value, next}` list. */
export async function listAll<T = any>(path: string, max = 100_000): Promise<T[]> {
  const out: T[] = [];
  let next: string | null = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page: { value: T[]; next?: string | null } = await get(
      `${path}${sep}limit=1000${next ? `&next=${enc(next)}` : ''}`,
    );
    out.push(...page.value);
    next = page.next ?? null;
  } while (next && out.length < max);
  return out;
}

/** Every result of a twin query (ADT paging with continuationToken). */
export async function queryAll<T = any>(query: string, max = 100_000): Promise<T[]> {
  const out: T[] = [];
  let token: string | null = null;
  do {
    const page: { value: T[]; continuationToken?: string | null } = await post('/api/v1/query', {
      query,
      pageSize: 1000,
      ...(token ? { continuationToken: token } : {}),
    });
    out.push(...page.value);
    token = page.continuationToken ?? null;
  } while (token && out.length < max);
  return out;
}

export interface LiveEvent {
  id: string;
  type: string;
  twin?: string;
  model?: string;
  data: any;
}

/**
 * The server's event stream, read with fetch so the bearer header can be
 * sent (EventSource cannot). Reconnects with Last-Event-ID after a drop,
 * so nothing in between is missed.
 */
export class EventStream {
  private listeners = new Set<(e: LiveEvent) => void>();
  private abort: AbortController | null = null;
  private lastId: string | null = null;
  connected = false;
  private statusListeners = new Set<(up: boolean) => void>();

  subscribe(f: (e: LiveEvent) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  /** Calls `f` with the current state at once, then on every change. */
  onStatus(f: (up: boolean) => void): () => void {
    this.statusListeners.add(f);
    f(this.connected);
    return () => this.statusListeners.delete(f);
  }

  private setStatus(up: boolean) {
    if (this.connected === up) return;
    this.connected = up;
    this.statusListeners.forEach((f) => f(up));
  }

  /** Each start is a generation; a loop of an older one ends quietly. */
  private gen = 0;

  start() {
    const mine = ++this.gen;
    this.abort?.abort();
    void this.loop(mine);
  }

  stop() {
    this.gen++;
    this.abort?.abort();
    this.abort = null;
    this.setStatus(false);
  }

  private async loop(mine: number) {
    let backoff = 500;
    while (mine === this.gen && signedIn()) {
      const abort = new AbortController();
      this.abort = abort;
      try {
        const headers: Record<string, string> = { ...authHeader(), accept: 'text/event-stream' };
        if (this.lastId) headers['last-event-id'] = this.lastId;
        const r = await fetch('/api/v1/events?types=telemetry,twin,relationship,alarm', {
          headers,
          signal: abort.signal,
        });
        if (mine !== this.gen) return;
        if (r.status === 401) {
          await refresh();
          continue;
        }
        if (!r.ok || !r.body) throw new Error(`events: HTTP ${r.status}`);
        this.setStatus(true);
        backoff = 500;
        await this.read(r.body, mine);
      } catch {
        // dropped: reconnect below
      }
      if (mine !== this.gen) return;
      this.setStatus(false);
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 10_000);
    }
  }

  private async read(body: ReadableStream<Uint8Array>, mine: number) {
    const reader = body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done || mine !== this.gen) return;
      buf += dec.decode(value, { stream: true });
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let data = '';
        let id: string | null = null;
        for (const line of block.split('\n')) {
          if (line.startsWith('data:')) data += line.slice(5).trimStart();
          else if (line.startsWith('id:')) id = line.slice(3).trim();
        }
        if (id) this.lastId = id;
        if (!data) continue;
        try {
          const ev = JSON.parse(data) as LiveEvent;
          this.listeners.forEach((f) => f(ev));
        } catch {
          // not an event (a comment or keep-alive)
        }
      }
    }
  }
}

export const events = new EventStream();
