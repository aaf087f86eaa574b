// Fleet (on a hub): every node with its state and last heartbeat, every node's tasks (with
// their logs and controls through the hub), and the merged event timeline.

import { useSignal } from '../signal.js';
import { nodes, health } from '../store.js';
import { Badge, When } from '../ui.jsx';
import { Actions } from './overview.jsx';
import { Events } from './events.jsx';

export function Fleet() {
  const ans = useSignal(nodes);
  const h = useSignal(health);
  if (!ans) return <p class="muted">This daemon is not a hub: start one with <code>corral serve --hub</code>.</p>;
  return (
    <section class="fleet">
      <p class="muted small">
        Redis {ans.server}: {ans.connected ? 'connected' : 'not connected'}
        {ans.last_error ? ` (${ans.last_error})` : ''} · {ans.nodes.length} node(s) · {ans.events_received} events received
      </p>
      <div class="cards">
        {ans.nodes.map((n) => {
          const r = n;
          const local = h && r.node === h.node;
          return (
            <article class={`card node n-${n.status}`} key={r.node} data-node={r.node} aria-label={`node ${r.node}`}>
              <header>
                <h3>{r.node}</h3>
                <span class={`badge ns-${n.status}`}>{n.status}</span>
              </header>
              <div class="kv-grid">
                <span>last heartbeat</span>
                <b>
                  <When ts={r.last_seen} />
                </b>
                <span>version</span>
                <b>{r.version}</b>
                <span>API</span>
                <b>{r.api}</b>
              </div>
              <table class="node-tasks">
                <tbody>
                  {(r.task_list || []).map((task) => (
                    <tr key={task.name} data-task={task.name}>
                      <td>{task.name}</td>
                      <td>
                        <Badge status={task.status} />
                      </td>
                      <td>{task.restarts} restarts</td>
                      <td>
                        <Actions node={local ? null : r.node} name={task.name} status={task.status} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </article>
          );
        })}
      </div>
      <h3>Fleet events</h3>
      <Events fleet />
    </section>
  );
}
