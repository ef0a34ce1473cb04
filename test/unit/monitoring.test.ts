// The alerts (k8s/chart/files/prometheus-rules.yaml, and k8s/monitoring's copy) and the Grafana
// dashboard (k8s/chart/files/grafana-dashboard.json) name only metrics the bridge and the function
// export, and their PromQL holds together: balanced brackets, known functions and keywords. The
// metric names come from the registries themselves (bridge/metrics.ts, functions/metrics.ts,
// prom-client's process metrics with each component's prefix), so a renamed metric fails here
// before a dashboard goes blank. Not a PromQL parser: enough to catch a misspelt name, a
// missing parenthesis or a function that does not exist.

import { loadYaml } from '@kubernetes/client-node';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bridgeMetrics } from '../../bridge/metrics.ts';
import { createFunctionMetrics } from '../../functions/metrics.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

interface Panel {
  title: string;
  type: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}

const rulesFile = loadYaml<{ groups: { name: string; rules: Rule[] }[] }>(
  await readFile(join(REPO_ROOT, 'k8s/chart/files/prometheus-rules.yaml'), 'utf8'),
);
const rules = rulesFile.groups.flatMap((group) => group.rules);
const dashboard = JSON.parse(await readFile(join(REPO_ROOT, 'k8s/chart/files/grafana-dashboard.json'), 'utf8')) as {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: string | { query: string }; definition?: string }[] };
};
const panels = (function flatten(list: readonly Panel[]): Panel[] {
  return list.flatMap((panel) => [panel, ...flatten(panel.panels ?? [])]);
})(dashboard.panels);

/** Every series name the two components can expose: histograms as their _bucket, _sum and _count. */
async function exportedMetricNames(): Promise<Set<string>> {
  const names = new Set<string>();
  for (const registry of [bridgeMetrics().registry, createFunctionMetrics().registry]) {
    for (const metric of await registry.getMetricsAsJSON()) {
      const type = String(metric.type);
      if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${metric.name}${suffix}`);
      else if (type === 'summary') for (const suffix of ['', '_sum', '_count']) names.add(`${metric.name}${suffix}`);
      else names.add(metric.name);
    }
  }
  return names;
}

const known = await exportedMetricNames();

const FUNCTIONS = new Set(
  (
    'abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min count_over_time day_of_month ' +
    'day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction ' +
    'histogram_quantile histogram_stddev histogram_stdvar histogram_sum hour idelta increase irate label_join ' +
    'label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month ' +
    'predict_linear present_over_time quantile_over_time rate resets round scalar sgn sort sort_by_label ' +
    'sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time time timestamp vector year'
  ).split(' '),
);
const AGGREGATIONS = new Set(
  'sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio'.split(' '),
);
/** Keywords followed by a parenthesised list of label names. */
const LABEL_LISTS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan', 'atan2']);
const GRAFANA_VARIABLES = /\$__(rate_interval|interval|range|range_s|interval_ms)\b|\$\{__(rate_interval|interval|range)\}/g;

/** What is wrong with one expression; empty when nothing is. Also returns the metric names it uses. */
function checkPromql(expr: string, metrics: ReadonlySet<string>): { problems: string[]; used: string[] } {
  const problems: string[] = [];
  const used: string[] = [];
  const text = expr.replace(GRAFANA_VARIABLES, '5m');
  const tokens = [
    ...text.matchAll(
      /"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`|[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?|=~|!~|!=|==|>=|<=|\S/g,
    ),
  ].map((match) => match[0]);
  const closers: Record<string, string> = { '(': ')', '{': '}', '[': ']' };
  const stack: string[] = [];
  /** Inside a label list (by (...)), a matcher ({...}) or a range ([...]): names there are not metrics. */
  let skipUntilDepth: number | undefined;
  for (let index = 0; index < tokens.length; index++) {
    const token = tokens[index]!;
    if (token in closers) {
      stack.push(closers[token]!);
      if ((token === '{' || token === '[') && skipUntilDepth === undefined) skipUntilDepth = stack.length;
      continue;
    }
    if (token === ')' || token === '}' || token === ']') {
      const expected = stack.pop();
      if (expected !== token) problems.push(`unbalanced "${token}" in ${expr}`);
      if (skipUntilDepth !== undefined && stack.length < skipUntilDepth) skipUntilDepth = undefined;
      continue;
    }
    if (!/^[A-Za-z_:]/.test(token) || skipUntilDepth !== undefined) continue;
    const next = tokens[index + 1];
    if (LABEL_LISTS.has(token)) {
      if (next !== '(') problems.push(`"${token}" without a label list in ${expr}`);
      else {
        stack.push(')');
        skipUntilDepth = stack.length;
        index++;
      }
      continue;
    }
    if (KEYWORDS.has(token)) continue;
    // An aggregation may name its grouping first: sum by (le) (…).
    if (AGGREGATIONS.has(token) && (next === 'by' || next === 'without')) continue;
    if (next === '(') {
      if (!FUNCTIONS.has(token) && !AGGREGATIONS.has(token)) problems.push(`unknown function ${token}() in ${expr}`);
      continue;
    }
    used.push(token);
    if (!metrics.has(token)) problems.push(`unknown metric ${token} in ${expr}`);
  }
  if (stack.length > 0) problems.push(`unclosed "${stack.join('')}" in ${expr}`);
  if (used.length === 0) problems.push(`no metric in ${expr}`);
  return { problems, used };
}

describe('the PromQL check itself', () => {
  it('knows the metrics of both components, process metrics included', () => {
    for (const name of [
      'image_clone_bridge_queue_depth',
      'image_clone_bridge_namespace_image_results_total',
      'image_clone_bridge_reconcile_duration_seconds_bucket',
      'image_clone_bridge_build_info',
      'image_clone_bridge_process_resident_memory_bytes',
      'image_clone_copy_duration_seconds_bucket',
      'image_clone_bytes_copied_total',
      'image_clone_function_build_info',
      'image_clone_function_process_resident_memory_bytes',
    ]) {
      expect(known.has(name), name).toBe(true);
    }
  });

  it('finds what it is for: unknown metrics and functions, wrong suffixes, unbalanced brackets', () => {
    const problems = (expr: string) => checkPromql(expr, known).problems;
    expect(
      problems('sum by (namespace) (rate(image_clone_bridge_namespace_image_results_total{status="failed"}[5m])) > 0'),
    ).toEqual([]);
    expect(problems('image_clone_bridge_nonexistent_total')).toEqual([
      'unknown metric image_clone_bridge_nonexistent_total in image_clone_bridge_nonexistent_total',
    ]);
    expect(problems('histogram_quantile(0.9, rate(image_clone_copy_duration_seconds_buckets[5m]))')[0]).toMatch(/unknown metric/);
    expect(problems('rates(image_clone_bytes_copied_total[5m])')[0]).toMatch(/unknown function rates/);
    expect(problems('sum(rate(image_clone_bytes_copied_total[5m])')[0]).toMatch(/unclosed/);
    expect(problems('sum(rate(image_clone_bytes_copied_total[5m)))')[0]).toMatch(/unbalanced/);
    expect(problems('sum by namespace (image_clone_bridge_queue_depth)')[0]).toMatch(/without a label list/);
    expect(problems('vector(1)')).toEqual(['no metric in vector(1)']);
    // Label names inside matchers and lists are not metrics; a variable of Grafana is a duration.
    expect(
      problems('sum without (pod) (increase(image_clone_bridge_patches_total{kind=~"Deployment|DaemonSet"}[$__rate_interval]))'),
    ).toEqual([]);
  });
});

describe('alerts', () => {
  it('cover what an operator must hear about', () => {
    expect(rules.map((rule) => rule.alert)).toEqual([
      'ImageCloneBackupsFailing',
      'ImageCloneQueueGrowing',
      'ImageCloneNoLeader',
      'ImageCloneSeveralLeaders',
      'ImageCloneCallbacksRejected',
      'ImageCloneCallbacksMisrouted',
      'ImageCloneFunctionUnreachable',
    ]);
    for (const rule of rules) {
      expect(rule.labels.severity, rule.alert).toMatch(/^(warning|critical)$/);
      expect(rule.annotations.summary, rule.alert).toBeTruthy();
      expect(rule.annotations.description, rule.alert).toBeTruthy();
      if (rule.for !== undefined) expect(rule.for, rule.alert).toMatch(/^\d+[smh]$/);
    }
  });

  it('name only metrics that exist, in PromQL that holds together', () => {
    for (const rule of rules) expect(checkPromql(rule.expr, known).problems, rule.alert).toEqual([]);
  });

  it('are the same in k8s/monitoring as in the chart', async () => {
    const plain = loadYaml<{ spec: { groups: unknown[] } }>(
      await readFile(join(REPO_ROOT, 'k8s/monitoring/prometheus-rule.yml'), 'utf8'),
    );
    expect(plain.spec.groups).toEqual(rulesFile.groups);
  });
});

describe('the Grafana dashboard', () => {
  it('shows backups and failures per namespace, copy latency and bytes, queue depth and reconcile latency', () => {
    const uses = (metric: string, pattern = '') =>
      panels.some((panel) =>
        (panel.targets ?? []).some((target) => target.expr.includes(metric) && target.expr.includes(pattern)),
      );
    expect(uses('image_clone_bridge_namespace_image_results_total', 'copied')).toBe(true);
    expect(uses('image_clone_bridge_namespace_image_results_total', 'failed')).toBe(true);
    expect(uses('image_clone_copy_duration_seconds_bucket')).toBe(true);
    expect(uses('image_clone_bytes_copied_total')).toBe(true);
    expect(uses('image_clone_bridge_queue_depth')).toBe(true);
    expect(uses('image_clone_bridge_reconcile_duration_seconds_bucket')).toBe(true);
  });

  it('names only metrics that exist, in every panel and variable', () => {
    const exprs = panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ where: panel.title, expr: target.expr })));
    expect(exprs.length).toBeGreaterThan(10);
    for (const { where, expr } of exprs) expect(checkPromql(expr, known).problems, where).toEqual([]);
    for (const panel of panels) expect(panel.targets?.length ?? 0, `${panel.title} has no query`).toBeGreaterThan(0);
    // Template variables: label_values(metric, label) is Grafana's, not PromQL.
    for (const variable of dashboard.templating.list.filter((entry) => entry.type === 'query')) {
      const query = typeof variable.query === 'string' ? variable.query : (variable.query?.query ?? '');
      const match = /^label_values\((\w+),\s*(\w+)\)$/.exec(query);
      expect(match, variable.name).not.toBeNull();
      expect(known.has(match![1]!), match![1]).toBe(true);
    }
  });
});
