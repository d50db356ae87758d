import { createContext } from 'preact';
import { useContext, useEffect, useState } from 'preact/hooks';
import type { Me } from './api';

export interface Session {
  me: Me;
  /** Tenant-wide permission (scoped grants are not enough for a page). */
  can: (perm: string) => boolean;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error('no session');
  return s;
}

export function session(me: Me): Session {
  const all = new Set(me.permissions);
  return { me, can: (p) => all.has(p) };
}

/** The hash route, split: `#/twin/r1` → ['twin', 'r1']. */
export function useRoute(): string[] {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const f = () => setHash(location.hash);
    addEventListener('hashchange', f);
    // Effects run after paint: a hash change between the first render and
    // this line fired no listener (a link followed right after sign-in).
    f();
    return () => removeEventListener('hashchange', f);
  }, []);
  const parts = hash.replace(/^#\/?/, '').split('?')[0].split('/').filter(Boolean).map(decodeURIComponent);
  return parts.length ? parts : ['fleet'];
}

export function href(...parts: string[]): string {
  return '#/' + parts.map(encodeURIComponent).join('/');
}

/** Re-renders every `ms` (relative times such as "5 s ago"). */
export function useTick(ms: number) {
  const [, set] = useState(0);
  useEffect(() => {
    const t = setInterval(() => set((n) => n + 1), ms);
    return () => clearInterval(t);
  }, [ms]);
}

/** The `?a=b` part of the hash route. */
export function hashParams(): URLSearchParams {
  const i = location.hash.indexOf('?');
  return new URLSearchParams(i >= 0 ? location.hash.slice(i + 1) : '');
}
