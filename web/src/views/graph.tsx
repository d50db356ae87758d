// Twins and relationships drawn as a graph (Cytoscape.js, loaded only
// when this page opens) for a selected subtree; a click opens the twin.

import { useEffect, useRef, useState } from 'preact/hooks';
import { href, useSession } from '../app';
import { loadFleet, parents, type FleetData } from './fleet';

const MAX_NODES = 1500;

export function GraphView({ root }: { root?: string }) {
  const s = useSession();
  const box = useRef<HTMLDivElement>(null);
  const [data, setData] = useState<FleetData | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [sel, setSel] = useState(root ?? '');
  const [shown, setShown] = useState(0);

  useEffect(() => {
    loadFleet(false, s.can('alarms:read')).then(setData, (e) => setError(e.message));
  }, []);

  useEffect(() => {
    if (!data || !box.current) return;
    let cy: any = null;
    let dead = false;
    // The subtree: the root and everything reachable from it along the
    // relationships, either direction of the tree the fleet view draws.
    const parent = parents(data.rels);
    const kids = new Map<string, string[]>();
    for (const [c, p] of parent) {
      if (!kids.has(p)) kids.set(p, []);
      kids.get(p)!.push(c);
    }
    const ids = new Set<string>();
    if (sel) {
      const stack = [sel];
      while (stack.length && ids.size < MAX_NODES) {
        const id = stack.pop()!;
        if (ids.has(id)) continue;
        ids.add(id);
        stack.push(...(kids.get(id) ?? []));
      }
    } else {
      for (const t of data.twins.slice(0, MAX_NODES)) ids.add(t.$dtId);
    }
    const models = new Map(data.twins.map((t) => [t.$dtId, t.$metadata?.$model ?? '']));
    const elements: any[] = [...ids].map((id) => ({
      data: {
        id,
        label: id,
        alarms: Object.values(data.counts[id] ?? {}).reduce((a, b) => a + b, 0),
        model: (models.get(id) ?? '').replace(/^dtmi:/, '').replace(/;\d+$/, ''),
      },
    }));
    data.rels.forEach((r, i) => {
      if (ids.has(r.$sourceId) && ids.has(r.$targetId))
        elements.push({ data: { id: `e${i}`, source: r.$sourceId, target: r.$targetId, label: r.$relationshipName } });
    });
    setShown(ids.size);
    void import('cytoscape').then(({ default: cytoscape }) => {
      if (dead || !box.current) return;
      const css = getComputedStyle(document.documentElement);
      const fg = css.getPropertyValue('--fg').trim() || '#222';
      const accent = css.getPropertyValue('--accent').trim() || '#1f6feb';
      const crit = css.getPropertyValue('--critical').trim() || '#d1242f';
      cy = cytoscape({
        container: box.current,
        elements,
        layout: { name: 'breadthfirst', directed: true, roots: sel ? [sel] : undefined, spacingFactor: 1.1, animate: false } as any,
        style: [
          {
            selector: 'node',
            style: { label: 'data(label)', color: fg, 'font-size': 11, 'background-color': accent, width: 18, height: 18, 'text-valign': 'bottom', 'text-margin-y': 4 },
          },
          { selector: 'node[alarms > 0]', style: { 'background-color': crit, 'border-width': 2, 'border-color': crit } },
          {
            selector: 'edge',
            style: { width: 1, 'line-color': '#999', 'target-arrow-color': '#999', 'target-arrow-shape': 'triangle', 'curve-style': 'bezier', label: 'data(label)', 'font-size': 9, color: '#888' },
          },
        ],
        wheelSensitivity: 0.3,
      });
      cy.on('tap', 'node', (e: any) => {
        location.hash = href('twin', e.target.id());
      });
      (window as any).__twinhubGraph = cy;
    });
    return () => {
      dead = true;
      cy?.destroy();
    };
  }, [data, sel]);

  if (error) return <p class="error" role="alert">{error}</p>;
  return (
    <section class="graph">
      <div class="toolbar">
        <h2>Graph</h2>
        <input
          list="twin-ids"
          aria-label="Root twin"
          placeholder="root twin (empty: everything)"
          value={sel}
          onChange={(e) => {
            setSel(e.currentTarget.value.trim());
            location.hash = e.currentTarget.value.trim() ? href('graph', e.currentTarget.value.trim()) : href('graph');
          }}
        />
        <datalist id="twin-ids">{data?.twins.slice(0, 2000).map((t) => <option value={t.$dtId} />)}</datalist>
        <span class="muted" data-testid="graph-count">
          {data ? `${shown} twins${shown >= MAX_NODES ? ` (first ${MAX_NODES}; pick a root)` : ''}` : 'loading…'}
        </span>
      </div>
      <div class="graph-box" ref={box} data-testid="graph" />
    </section>
  );
}
