// A tiny observable value: the store's pieces, read by components through `useSignal`.

import { useEffect, useState } from 'preact/hooks';

export function signal(value) {
  const subs = new Set();
  return {
    get: () => value,
    set(v) {
      if (v === value) return;
      value = v;
      for (const f of subs) f(v);
    },
    /** Notifies subscribers of a value changed in place. */
    touch() {
      for (const f of subs) f(value);
    },
    subscribe(f) {
      subs.add(f);
      return () => subs.delete(f);
    },
  };
}

/** Re-renders the component when the signal changes (coalesced to one frame). */
export function useSignal(s) {
  const [, bump] = useState(0);
  useEffect(() => {
    let queued = false;
    return s.subscribe(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        bump((n) => n + 1);
      });
    });
  }, [s]);
  return s.get();
}
