// uPlot, wrapped for Preact: a chart that keeps its canvas and takes new data in place.

import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

/** The x range: the data's, or at least the last minute (one point is not a range of years). */
function xRange(xs) {
  const last = xs.length ? xs[xs.length - 1] : Date.now() / 1000;
  const first = xs.length ? xs[0] : last;
  return last - first < 60 ? { min: last - 60, max: last + 5 } : { min: first, max: last };
}

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/**
 * `series`: [{label, color}] for the y columns; `data`: [xs, ys1, ys2, ...] (x in seconds).
 * `spark`: a sparkline (no axes, no legend).
 */
export function Chart({ data, series, height = 180, spark = false, bars = false, label }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const el = box.current;
    const fg = css('--fg-muted') || '#888';
    const grid = css('--border') || '#ddd';
    const opts = {
      width: Math.max(100, el.clientWidth),
      height,
      legend: { show: !spark },
      cursor: { show: !spark, points: { show: !spark } },
      // A few points (one request so far) still get a readable minute, not a range of years.
      scales: {
        x: { time: true, auto: false },
        y: { range: (u, min, max) => [0, Math.max(1, max == null ? 1 : max * 1.1)] },
      },
      axes: spark
        ? [{ show: false }, { show: false }]
        : [
            { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
            { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 50 },
          ],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: spark ? 1.5 : 2,
          fill: spark ? s.color + '22' : undefined,
          spanGaps: true,
          points: { show: !spark || data[0].length < 3, size: spark ? 3 : 4 },
          paths: bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
        })),
      ],
    };
    plot.current = new uPlot(opts, data, el);
    plot.current.setScale('x', xRange(data[0]));
    const ro = new ResizeObserver(() => {
      if (plot.current) plot.current.setSize({ width: Math.max(100, el.clientWidth), height });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, [series.length, height, spark, bars]);
  useEffect(() => {
    if (plot.current) {
      plot.current.setData(data, false);
      plot.current.setScale('x', xRange(data[0]));
    }
  }, [data]);
  return <div class={spark ? 'chart spark' : 'chart'} ref={box} role="img" aria-label={label} data-points={data[0].length} />;
}
