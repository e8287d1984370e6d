// Time-series charts with uPlot: small (about 50 kB), fast on canvas, made for exactly
// this (x = time, a few series), with a live legend that shows the values under the
// cursor. Each chart is a <figure> whose caption says what it shows, and whose text
// summary (for screen readers and for tests) gives the latest values.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom";

export interface SeriesSpec {
  label: string;
  color: string;
  /** "bars": stacked on the bar series after it (the first one is the top). */
  kind: "line" | "bars";
  format?: (value: number | null) => string;
}

export interface Chart {
  element: HTMLElement;
  /** x: unix seconds; one array per series (null: no value). */
  update(x: number[], series: (number | null)[][], summary: string): void;
  dispose(): void;
}

const HEIGHT = 170;

export function timeChart(title: string, testId: string, specs: SeriesSpec[], yFormat: (v: number) => string): Chart {
  const plotBox = h("div", { class: "chart-plot", "aria-hidden": "true" });
  const summary = h("p", { class: "chart-summary", "data-testid": `${testId}-summary` });
  const element = h(
    "figure",
    { class: "chart panel", "data-testid": testId },
    h("figcaption", {}, title),
    plotBox,
    summary,
  );
  let plot: uPlot | null = null;
  let raw: (number | null)[][] = [];
  const stacked = specs.some((s) => s.kind === "bars");

  const options = (width: number): uPlot.Options => ({
    width,
    height: HEIGHT,
    legend: { live: true },
    cursor: { points: { show: !stacked } },
    scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), Math.max(max * 1.1, 1e-9)] } },
    axes: [
      { stroke: "#57606a", grid: { stroke: "#eaeef2" }, ticks: { stroke: "#d0d7de" } },
      {
        stroke: "#57606a",
        grid: { stroke: "#eaeef2" },
        ticks: { stroke: "#d0d7de" },
        size: 56,
        values: (_u, splits) => splits.map((v) => yFormat(v)),
      },
    ],
    series: [
      {},
      ...specs.map((spec, i) => ({
        label: spec.label,
        stroke: spec.color,
        width: spec.kind === "bars" ? 0 : 2,
        fill: spec.kind === "bars" ? spec.color : undefined,
        spanGaps: false,
        points: { show: spec.kind !== "bars", size: 6 },
        paths: spec.kind === "bars" ? uPlot.paths.bars!({ size: [0.8, 40], align: 0 }) : undefined,
        // stacked bars draw running totals; the legend shows the series' own value
        // away from the chart the legend shows the latest bucket's values
        value: (_u: uPlot, _v: number | null, _si: number, index: number | null) => {
          const values = raw[i] ?? [];
          const value = values[index ?? values.length - 1] ?? null;
          return spec.format ? spec.format(value) : value == null ? "—" : yFormat(value);
        },
      })),
    ],
  });

  function ensure(): uPlot | null {
    if (plot) return plot;
    const width = plotBox.clientWidth;
    if (width === 0) return null; // not in the page yet
    plot = new uPlot(options(width), [[]], plotBox);
    return plot;
  }

  const resize = new ResizeObserver(() => {
    const width = plotBox.clientWidth;
    if (width === 0) return;
    if (!plot) {
      if (raw.length) ensure()?.setData(lastData);
    } else if (Math.abs(plot.width - width) > 1) plot.setSize({ width, height: HEIGHT });
  });
  resize.observe(plotBox);

  let lastData: uPlot.AlignedData = [[]];

  return {
    element,
    update(x, series, text) {
      raw = series;
      // Bars stack: each bar series shows the total of itself and the bar series after
      // it, and uPlot draws them in order, the tallest first, so that every part shows.
      let data: (number | null)[][] = series;
      if (stacked) {
        const totals: (number | null)[][] = series.map(() => []);
        for (let si = series.length - 1; si >= 0; si--) {
          const below = specs[si]?.kind === "bars" && specs[si + 1]?.kind === "bars" ? totals[si + 1] : undefined;
          totals[si] = series[si]!.map((v, j) => (specs[si]?.kind === "bars" ? (v ?? 0) + (below?.[j] ?? 0) : v));
        }
        data = totals;
      }
      lastData = [x, ...data] as uPlot.AlignedData;
      summary.textContent = text;
      const chart = ensure();
      chart?.setData(lastData);
    },
    dispose() {
      resize.disconnect();
      plot?.destroy();
      plot = null;
    },
  };
}
