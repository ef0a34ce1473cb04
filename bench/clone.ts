// `npm run bench`: the clone function against skopeo, crane and regctl, copying between local
// registries (real CNCF distribution 2.8 on loopback, plain HTTP). See docs/benchmarks.md.
//
//   (a) 5 × 40 MiB incompressible layers into an empty registry
//   (b) 60 × 4 KiB layers into an empty registry
//   (c) the (a) image again, into a registry that already holds it
//   (d) 5 × 160 MiB layers: the function's peak RSS must not grow with image size
//
// Every run of every tool copies into a fresh, empty target registry, first (untimed) the same
// three unrelated warm-up images, then the scenario's image. Each scenario starts with one copy
// that is not counted. The function is a server: it is started per run (so its process-wide token
// cache and known-blob index start empty) and only the POST /clone round-trip is timed. The peers
// are command-line tools: they are timed from spawn to exit. Tools take turns within a run.
//
// Options: --runs N (default 3), --scenarios a,b,c,d, --tools function,skopeo,crane,regctl,
// --big-mib N (layer size of (d), default 160), --json FILE (all measurements), --latency-ms N
// (the tools reach both registries through proxies that hold every byte N ms each way).
// BLOB_CONCURRENCY, TRANSFER_CONCURRENCY, SMALL_BLOBS_PER_SLOT, IMAGE_CONCURRENCY and LOG_LEVEL in
// the environment are passed to the function; its node gets the flags of package.json's start
// script (as npm start and the container run it) plus BENCH_NODE_OPTIONS (e.g. "--cpu-prof
// --cpu-prof-dir=DIR").

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import { backupLocation, backupReference } from '../functions/contract/index.ts';
import { parseReference } from '../functions/contract/index.ts';
import {
  MANIFEST_ACCEPT,
  fetchManifest,
  manyLayersImage,
  ociImage,
  pushImage,
  randomLayersImage,
  sha256Digest,
  type TestImage,
} from '../testbed/images.ts';
import { startRegistry, type Registry } from '../testbed/registry.ts';
import { startBenchFunction, startFlags, type CloneResult } from './function.ts';
import { startLatencyProxy } from './latency-proxy.ts';
import { installPeers, peerContext, runPeer, type PeerTool } from './peers.ts';
import { cpuMs, loadAverage, registryPid } from './proc.ts';
import { formatCounts, markLog, settleLog, type RequestCounts } from './requests.ts';

const MiB = 1024 * 1024;
const BACKUP_NAMESPACE = 'bench';
const TAG = '1';
/**
 * Copied by every tool, untimed, into the fresh target registry before the timed copy: the
 * registries are then in the same state for every tool, and the function, a long-running server,
 * runs warm code, as it does after its first copies in production (V8 optimises the engine's hot
 * paths over the first few hundred requests; a single tiny warm-up copy left (b) 20-30 % slower).
 */
const WARMUP_REPOS = ['bench/warmup', 'bench/warmup-small-1', 'bench/warmup-small-2'];

type ScenarioKey = 'a' | 'b' | 'c' | 'd';

interface ImageSummary {
  root: string;
  manifests: string[];
  blobs: Array<{ digest: string; size: number }>;
  bytes: number;
}

interface Scenario {
  key: ScenarioKey;
  title: string;
  /** Source repository (tag TAG). */
  repo: string;
  image: ImageSummary;
  /** The function's result: a real copy of every blob, or nothing to do. */
  expect: 'copied' | 'exists';
  /** Pushed into the target before the timed copy, at the repository the tool writes to. */
  preload?: TestImage;
  /** Goal: the function's median at most this times skopeo's. */
  goal?: number;
}

interface Measurement {
  scenario: ScenarioKey;
  tool: string;
  run: number;
  ms: number;
  /** Function: VmRSS after warm-up and VmHWM after the copy; peers: GNU time's max RSS. */
  rssBeforeKiB?: number;
  peakKiB?: number;
  bytes?: number;
  /** CPU time of the copier (the function process, or the peer via GNU time), ms. */
  cpuMs?: number;
  /** CPU time of the source and target registries during the copy, ms. */
  registryCpuMs: number;
  /** 1-minute load average when the run started. */
  load: number;
  source: RequestCounts;
  target: RequestCounts;
}

/** CPU time of both registries from now on. */
function registryCpu(source: Registry, target: Registry): () => number {
  const pids = [registryPid(source), registryPid(target)];
  const before = pids.map(cpuMs);
  return () => pids.reduce((sum, pid, i) => sum + cpuMs(pid) - before[i]!, 0);
}

const { values: options } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    scenarios: { type: 'string', default: 'a,b,c,d' },
    tools: { type: 'string' },
    'big-mib': { type: 'string', default: '160' },
    json: { type: 'string' },
    'latency-ms': { type: 'string', default: '0' },
  },
});
const runs = Number(options.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
const wanted = new Set(options.scenarios.split(',').map((s) => s.trim()));
const bigLayer = Number(options['big-mib']) * MiB;
const latencyMs = Number(options['latency-ms']);
if (!Number.isFinite(latencyMs) || latencyMs < 0) throw new Error('--latency-ms must be a number of milliseconds ≥ 0');

/**
 * The hosts the tools are given for the source and target registries: the registries themselves,
 * or with --latency-ms, proxies that hold every byte that long each way.
 */
async function networkTo(
  source: Registry,
  target: Registry,
): Promise<{ source: string; target: string; close(): Promise<void> }> {
  if (latencyMs === 0) return { source: source.host, target: target.host, close: async () => {} };
  const proxies = await Promise.all([startLatencyProxy(source.host, latencyMs), startLatencyProxy(target.host, latencyMs)]);
  return {
    source: proxies[0].host,
    target: proxies[1].host,
    close: async () => void (await Promise.all(proxies.map((proxy) => proxy.stop()))),
  };
}

const log = (line: string) => process.stderr.write(`${line}\n`);

function summary(image: TestImage): ImageSummary {
  const blobs = image.blobs.map((b) => ({ digest: b.digest, size: b.bytes.length }));
  return {
    root: image.root.digest,
    manifests: image.manifests.map((m) => m.digest),
    blobs,
    bytes: blobs.reduce((sum, b) => sum + b.size, 0),
  };
}

function machine(): string[] {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  const kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  const registry = execFileSync('docker-registry', ['--version'], { encoding: 'utf8' }).trim().split(' ').at(-1);
  return [
    `${cpus().length} × ${cpu}, ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, Linux ${kernel}`,
    `node ${process.version}, docker-registry ${registry}, registries' storage under ${process.env.TMPDIR ?? '/tmp'}`,
  ];
}

/** Target manifest bytes hash to the source digest, and every blob is there. */
async function verifyTarget(target: Registry, repository: string, image: ImageSummary, what: string): Promise<void> {
  const manifest = await fetchManifest(target.url, repository, TAG);
  if (manifest.status !== 200) throw new Error(`${what}: target has no ${repository}:${TAG} (${manifest.status})`);
  const digest = sha256Digest(manifest.bytes);
  if (digest !== image.root) throw new Error(`${what}: target manifest is ${digest}, source is ${image.root}`);
  for (const child of image.manifests) {
    const response = await fetch(`${target.url}/v2/${repository}/manifests/${child}`, {
      method: 'HEAD',
      headers: { accept: MANIFEST_ACCEPT },
    });
    if (response.status !== 200) throw new Error(`${what}: target lacks manifest ${child}`);
  }
  for (const blob of image.blobs) {
    const response = await fetch(`${target.url}/v2/${repository}/blobs/${blob.digest}`, { method: 'HEAD' });
    const length = Number(response.headers.get('content-length'));
    if (response.status !== 200 || length !== blob.size) throw new Error(`${what}: target lacks blob ${blob.digest}`);
  }
}

async function measureFunction(source: Registry, scenario: Scenario, run: number): Promise<Measurement> {
  const what = `(${scenario.key}) function run ${run}`;
  const target = await startRegistry();
  const network = await networkTo(source, target);
  try {
    const sourceRef = `${network.source}/${scenario.repo}:${TAG}`;
    const targetRef = backupReference(parseReference(sourceRef), backupLocation(network.target, BACKUP_NAMESPACE));
    if (scenario.preload) await pushImage(target.url, targetRef.repository, scenario.preload, { tag: TAG });
    const fn = await startBenchFunction({
      BACKUP_REGISTRY: network.target,
      BACKUP_NAMESPACE,
      INSECURE_REGISTRIES: `${network.source},${network.target}`,
    });
    let measured: { ms: number; results: CloneResult[] };
    let rssBeforeKiB: number;
    let peakKiB: number;
    let functionCpuMs: number;
    let registriesCpuMs: number;
    let load: number;
    let sourceMark: Awaited<ReturnType<typeof markLog>>;
    let targetMark: Awaited<ReturnType<typeof markLog>>;
    try {
      for (const repo of WARMUP_REPOS) {
        const warm = await fn.clone([`${network.source}/${repo}:${TAG}`]);
        if (warm.results[0]?.status !== 'copied') throw new Error(`${what}: warm-up failed: ${JSON.stringify(warm.results)}`);
      }
      rssBeforeKiB = fn.memory().rssKiB;
      sourceMark = await markLog(source);
      targetMark = await markLog(target);
      load = loadAverage();
      const registriesCpu = registryCpu(source, target);
      const cpuBefore = fn.cpuMs();
      measured = await fn.clone([sourceRef]);
      functionCpuMs = fn.cpuMs() - cpuBefore;
      registriesCpuMs = registriesCpu();
      peakKiB = fn.memory().peakKiB;
    } finally {
      await fn.stop();
    }
    const result = measured.results[0]!;
    if (result.status !== scenario.expect) throw new Error(`${what}: expected ${scenario.expect}, got ${JSON.stringify(result)}`);
    const expectedBytes = scenario.expect === 'copied' ? scenario.image.bytes : 0;
    if (result.bytes !== expectedBytes) throw new Error(`${what}: uploaded ${result.bytes} bytes, expected ${expectedBytes}`);
    if (result.digest !== scenario.image.root) throw new Error(`${what}: digest ${result.digest}, source ${scenario.image.root}`);
    await settleLog(source);
    await settleLog(target);
    const counts = { source: sourceMark.since(), target: targetMark.since() };
    await verifyTarget(target, targetRef.repository, scenario.image, what);
    return {
      scenario: scenario.key,
      tool: 'function',
      run,
      ms: measured.ms,
      rssBeforeKiB,
      peakKiB,
      bytes: result.bytes,
      cpuMs: functionCpuMs,
      registryCpuMs: registriesCpuMs,
      load,
      ...counts,
    };
  } finally {
    await network.close();
    await target.stop();
  }
}

async function measurePeer(source: Registry, scenario: Scenario, tool: PeerTool, run: number): Promise<Measurement> {
  const what = `(${scenario.key}) ${tool.name} run ${run}`;
  const target = await startRegistry();
  const network = await networkTo(source, target);
  const context = await peerContext([network.source, network.target]);
  try {
    const repository = `${BACKUP_NAMESPACE}/${scenario.repo}`;
    if (scenario.preload) await pushImage(target.url, repository, scenario.preload, { tag: TAG });
    for (const repo of WARMUP_REPOS) {
      await runPeer(tool, `${network.source}/${repo}:${TAG}`, `${network.target}/${BACKUP_NAMESPACE}/${repo}:${TAG}`, context);
    }
    const sourceMark = await markLog(source);
    const targetMark = await markLog(target);
    const load = loadAverage();
    const registriesCpu = registryCpu(source, target);
    const result = await runPeer(
      tool,
      `${network.source}/${scenario.repo}:${TAG}`,
      `${network.target}/${repository}:${TAG}`,
      context,
    );
    const registriesCpuMs = registriesCpu();
    await settleLog(source);
    await settleLog(target);
    const counts = { source: sourceMark.since(), target: targetMark.since() };
    await verifyTarget(target, repository, scenario.image, what);
    return {
      scenario: scenario.key,
      tool: tool.name,
      run,
      ms: result.ms,
      ...(result.peakKiB !== undefined && { peakKiB: result.peakKiB }),
      ...(result.cpuMs !== undefined && { cpuMs: result.cpuMs }),
      registryCpuMs: registriesCpuMs,
      load,
      ...counts,
    };
  } finally {
    await context.remove();
    await network.close();
    await target.stop();
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const ms = (value: number) => (value >= 100 ? value.toFixed(0) : value.toFixed(1));
const mib = (kib: number | undefined) => (kib === undefined ? '–' : (kib / 1024).toFixed(0));

function report(scenarios: Scenario[], tools: string[], measurements: Measurement[]): string {
  const lines: string[] = [];
  lines.push(
    '| scenario | tool | runs (ms) | median (ms) | × skopeo | goal | peak RSS (MiB) | CPU ms: tool / registries (median run) | requests to source / target (median run) |',
  );
  lines.push('|---|---|---|---:|---:|---|---:|---|---|');
  for (const scenario of scenarios) {
    const of = (tool: string) => measurements.filter((m) => m.scenario === scenario.key && m.tool === tool);
    const skopeo = of('skopeo');
    const base = skopeo.length ? median(skopeo.map((m) => m.ms)) : undefined;
    for (const tool of tools) {
      const rows = of(tool);
      if (!rows.length) continue;
      const mid = median(rows.map((m) => m.ms));
      const ratio = base ? mid / base : undefined;
      let goal = '';
      if (tool === 'function' && scenario.goal !== undefined && ratio !== undefined) {
        goal = `≤ ${scenario.goal} ${ratio <= scenario.goal ? 'met' : '**missed**'}`;
      }
      const peaks = rows.map((m) => m.peakKiB).filter((v): v is number => v !== undefined);
      const typical = [...rows].sort((x, y) => x.ms - y.ms)[Math.floor(rows.length / 2)]!;
      lines.push(
        `| (${scenario.key}) ${scenario.title} | ${tool} | ${rows.map((m) => ms(m.ms)).join(', ')} | ${ms(mid)} | ` +
          `${ratio === undefined ? '–' : ratio.toFixed(2)} | ${goal} | ${peaks.length ? mib(Math.max(...peaks)) : '–'} | ` +
          `${typical.cpuMs ?? '–'} / ${typical.registryCpuMs} | ` +
          `${formatCounts(typical.source)} / ${formatCounts(typical.target)} |`,
      );
    }
  }
  // The machine's speed drifts between runs; within a run the tools go one after another, so the
  // ratio of each run's pair moves less than the medians do. Shown beside the goal's ratio, not
  // instead of it.
  const pairLines: string[] = [];
  for (const scenario of scenarios) {
    const ratios = measurements
      .filter((m) => m.scenario === scenario.key && m.tool === 'function')
      .map((m) => {
        const peer = measurements.find((p) => p.scenario === scenario.key && p.tool === 'skopeo' && p.run === m.run);
        return peer ? m.ms / peer.ms : undefined;
      })
      .filter((ratio): ratio is number => ratio !== undefined);
    if (ratios.length) {
      pairLines.push(
        `- (${scenario.key}) function ÷ skopeo, run by run: ${ratios.map((r) => r.toFixed(2)).join(', ')} (median ${median(ratios).toFixed(2)})`,
      );
    }
  }
  if (pairLines.length) lines.push('', ...pairLines);
  const fn = (key: ScenarioKey) => measurements.filter((m) => m.scenario === key && m.tool === 'function');
  const memoryLines: string[] = [];
  for (const scenario of scenarios) {
    const rows = fn(scenario.key);
    if (!rows.length) continue;
    const peaks = rows.map((m) => m.peakKiB!);
    memoryLines.push(
      `| (${scenario.key}) ${scenario.title} | ${(scenario.image.bytes / MiB).toFixed(1)} | ` +
        `${rows.map((m) => mib(m.rssBeforeKiB)).join(', ')} | ${peaks.map(mib).join(', ')} | ${mib(Math.max(...peaks))} |`,
    );
  }
  if (memoryLines.length) {
    lines.push('', "The function's memory (VmRSS after start and warm-up, VmHWM after the copy):", '');
    lines.push('| scenario | image (MiB) | RSS before (MiB) | peak RSS per run (MiB) | max peak (MiB) |');
    lines.push('|---|---:|---|---|---:|');
    lines.push(...memoryLines);
    const all = measurements.filter((m) => m.tool === 'function').map((m) => m.peakKiB!);
    const small = fn('a').map((m) => m.peakKiB!);
    const big = fn('d').map((m) => m.peakKiB!);
    const verdict = [
      `peak RSS < 160 MiB: ${Math.max(...all) < 160 * 1024 ? 'met' : '**missed**'} (max ${mib(Math.max(...all))} MiB)`,
    ];
    if (small.length && big.length) {
      const growth = median(big) - median(small);
      verdict.push(
        `flat in image size: ${growth < 16 * 1024 ? 'met' : '**missed**'} (median peak ${mib(median(small))} MiB at ` +
          `${(scenarios.find((s) => s.key === 'a')!.image.bytes / MiB).toFixed(0)} MiB, ${mib(median(big))} MiB at ` +
          `${(scenarios.find((s) => s.key === 'd')!.image.bytes / MiB).toFixed(0)} MiB)`,
      );
    }
    lines.push('', ...verdict.map((v) => `- ${v}`));
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const peers = installPeers(log);
  const toolNames = options.tools ? options.tools.split(',').map((t) => t.trim()) : ['function', ...peers.map((p) => p.name)];
  for (const name of toolNames) {
    if (name !== 'function' && !peers.some((p) => p.name === name)) throw new Error(`unknown or unavailable tool ${name}`);
  }
  // Page the peers' binaries in before anything is timed.
  for (const peer of peers) execFileSync(peer.path, [peer.name === 'skopeo' ? '--version' : 'version'], { stdio: 'ignore' });

  const settings = ['LOG_LEVEL', 'IMAGE_CONCURRENCY', 'BLOB_CONCURRENCY', 'TRANSFER_CONCURRENCY', 'SMALL_BLOBS_PER_SLOT']
    .filter((name) => process.env[name])
    .map((name) => `${name}=${process.env[name]}`);
  const nodeOptions = [...startFlags(), process.env.BENCH_NODE_OPTIONS ?? ''].join(' ').trim();
  const header = [
    ...machine(),
    `function: node ${nodeOptions} ${process.env.BENCH_FUNCTION_ENTRY ?? 'functions/node.ts'}` +
      (settings.length ? ` with ${settings.join(', ')}` : ' (default settings)'),
    ...peers.filter((p) => toolNames.includes(p.name)).map((p) => `${p.name} ${p.version} (${p.path})`),
    ...(latencyMs > 0 ? [`registries behind latency proxies: ${latencyMs} ms each way, a TCP handshake per new connection`] : []),
    `${runs} runs per tool and scenario; load average at start ${loadAverage().toFixed(1)}`,
  ];
  log(header.join('\n'));

  log('building test images');
  // Two layers large enough to stream (blobs up to 64 KiB are read whole), so both ways are warm.
  const warmup = ociImage('bench/warmup', { layers: 2, layerSize: MiB });
  const imageA = randomLayersImage('bench/a', { count: 5, size: 40 * MiB });
  const imageB = manyLayersImage('bench/b', { count: 60, size: 4 * 1024 });
  const scenarios: Scenario[] = [];
  if (wanted.has('a')) {
    scenarios.push({ key: 'a', title: '5 × 40 MiB', repo: 'bench/a', image: summary(imageA), expect: 'copied', goal: 0.9 });
  }
  if (wanted.has('b')) {
    scenarios.push({ key: 'b', title: '60 × 4 KiB', repo: 'bench/b', image: summary(imageB), expect: 'copied', goal: 0.5 });
  }
  if (wanted.has('c')) {
    scenarios.push({
      key: 'c',
      title: 'already there',
      repo: 'bench/a',
      image: summary(imageA),
      expect: 'exists',
      preload: imageA,
      goal: 0.2,
    });
  }

  const source = await startRegistry();
  try {
    log(`source registry ${source.host}: pushing images`);
    await pushImage(source.url, 'bench/warmup', warmup, { tag: TAG });
    for (const repo of WARMUP_REPOS.slice(1)) {
      await pushImage(source.url, repo, manyLayersImage(repo, { count: 30, size: 4 * 1024 }), { tag: TAG });
    }
    await pushImage(source.url, 'bench/a', imageA, { tag: TAG });
    await pushImage(source.url, 'bench/b', imageB, { tag: TAG });
    if (wanted.has('d')) {
      // Built, pushed and let go of: only its digests are kept.
      const big = randomLayersImage('bench/d', { count: 5, size: bigLayer });
      await pushImage(source.url, 'bench/d', big, { tag: TAG });
      scenarios.push({
        key: 'd',
        title: `5 × ${bigLayer / MiB} MiB`,
        repo: 'bench/d',
        image: summary(big),
        expect: 'copied',
      });
    }

    const measurements: Measurement[] = [];
    const measure = (scenario: Scenario, tool: string, run: number) => {
      const peer = peers.find((p) => p.name === tool);
      return peer ? measurePeer(source, scenario, peer, run) : measureFunction(source, scenario, run);
    };
    for (const scenario of scenarios) {
      // One uncounted copy first, by the tool that ends each round. On this VM the first large
      // copy after a pause cost its registries 30-50 % more CPU, whichever tool made it (likely
      // DAMON, which drops page cache idle for a minute, and fresh memory faulting in slowly);
      // it always fell on the tool first in run 1. Now every counted copy follows another one.
      const settler = toolNames.at(-1)!;
      log(`(${scenario.key}) settling copy by ${settler}, not counted`);
      await measure(scenario, settler, 0);
      for (let run = 1; run <= runs; run++) {
        // Take turns, starting one later each run, so no tool always runs first.
        const order = toolNames.map((_, i) => toolNames[(i + run - 1) % toolNames.length]!);
        for (const tool of order) {
          const m = await measure(scenario, tool, run);
          measurements.push(m);
          const memory =
            m.tool === 'function' ? `RSS ${mib(m.rssBeforeKiB)} → peak ${mib(m.peakKiB)} MiB` : `peak RSS ${mib(m.peakKiB)} MiB`;
          log(
            `(${scenario.key}) run ${run}/${runs} ${tool.padEnd(8)} ${ms(m.ms).padStart(7)} ms  ${memory}  ` +
              `CPU ${m.cpuMs ?? '–'} / registries ${m.registryCpuMs} ms  load ${m.load.toFixed(1)}  ` +
              `source ${formatCounts(m.source)}  target ${formatCounts(m.target)}`,
          );
        }
      }
    }

    header.push(`load average at end ${loadAverage().toFixed(1)} (other work on the machine skews every figure)`);
    const table = report(scenarios, toolNames, measurements);
    process.stdout.write(`\n${header.map((h) => `    ${h}`).join('\n')}\n\n${table}\n`);
    if (options.json) {
      await writeFile(
        options.json,
        JSON.stringify({ header, scenarios: scenarios.map(({ preload: _, ...s }) => s), measurements }, null, 2),
      );
      log(`wrote ${options.json}`);
    }
  } finally {
    await source.stop();
  }
}

await main();
