// Which folder may import which, checked on the real source: the layout only keeps meaning if
// nothing quietly reaches around it.
//
// - No cycles between project modules: a cycle makes two modules one, and its load order decides
//   which of them sees the other half-initialised.
// - bridge/ sees only the function's published contract (functions/contract/): the two are
//   deployed apart and the contract is what they agree on.
// - functions/contract/ stands alone (lib/ aside), so the bridge never pulls the engine in.
// - lib/ is below everything: it imports nothing of the project.
// - The function knows nothing of the bridge, and production code nothing of the test tooling.
// - testbed/ runs outside vitest (npm run demo, the benchmarks): nothing from test/, no vitest.
//
// The checker is run first on a small graph with known faults, so a checker that finds nothing
// (a broken scan or rule) cannot make the real check pass.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, posix } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const REPO_ROOT = join(import.meta.dirname, '../..');
/** The folders whose modules are scanned; imports into other folders are checked, not followed. */
const SCANNED = ['functions', 'bridge', 'lib', 'testbed'];

/** A module's imports: other project modules (repo-relative paths) and packages (bare names). */
interface ModuleImports {
  readonly modules: readonly string[];
  readonly packages: readonly string[];
}

/** Repo-relative module path → its imports. */
type ImportGraph = ReadonlyMap<string, ModuleImports>;

interface Rule {
  /** What the rule protects, said in the failure. */
  readonly why: string;
  readonly appliesTo: (module: string) => boolean;
  readonly forbidsModule: (target: string) => boolean;
  readonly forbidsPackage?: (name: string) => boolean;
}

const under =
  (...folders: string[]) =>
  (path: string): boolean =>
    folders.some((folder) => path.startsWith(`${folder}/`));

const testPackage = (name: string): boolean => name === 'vitest' || name.startsWith('vitest/') || name === 'fast-check';

const RULES: readonly Rule[] = [
  {
    why: 'bridge/ may use only the published contract of the function (functions/contract/)',
    appliesTo: under('bridge'),
    forbidsModule: (target) => under('functions')(target) && !under('functions/contract')(target),
  },
  {
    why: 'functions/contract/ stands alone: it may import only itself and lib/',
    appliesTo: under('functions/contract'),
    forbidsModule: (target) => !under('functions/contract', 'lib')(target),
  },
  {
    why: 'lib/ imports nothing of the project',
    appliesTo: under('lib'),
    forbidsModule: (target) => !under('lib')(target),
  },
  {
    why: 'the function knows nothing of the bridge',
    appliesTo: under('functions'),
    forbidsModule: under('bridge'),
  },
  {
    why: 'production code imports no test tooling',
    appliesTo: under('functions', 'bridge', 'lib'),
    forbidsModule: under('test', 'testbed', 'bench', 'scripts'),
    forbidsPackage: testPackage,
  },
  {
    why: 'testbed/ runs outside vitest too (npm run demo, the benchmarks): nothing from test/, no vitest',
    appliesTo: under('testbed'),
    forbidsModule: under('test'),
    forbidsPackage: (name) => name === 'vitest' || name.startsWith('vitest/'),
  },
];

/** Every problem of the graph, one line each: cycles first, then forbidden imports. */
function importGraphProblems(graph: ImportGraph): string[] {
  const problems = findCycles(graph).map((cycle) => `cycle: ${cycle.join(' → ')}`);
  for (const [module, imports] of graph) {
    for (const rule of RULES.filter((candidate) => candidate.appliesTo(module))) {
      for (const target of imports.modules.filter(rule.forbidsModule)) {
        problems.push(`${module} imports ${target}: ${rule.why}`);
      }
      for (const name of imports.packages.filter((name) => rule.forbidsPackage?.(name) ?? false)) {
        problems.push(`${module} imports ${name}: ${rule.why}`);
      }
    }
  }
  return problems;
}

/**
 * One cycle per strongly connected component of more than one module (or a module importing
 * itself), as a path that starts and ends at the component's first module in sort order, so the
 * message is stable.
 */
function findCycles(graph: ImportGraph): string[][] {
  const next = (module: string) => (graph.get(module)?.modules ?? []).filter((target) => graph.has(target));
  // Tarjan's algorithm.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (module: string): void => {
    index.set(module, index.size);
    low.set(module, index.get(module)!);
    stack.push(module);
    onStack.add(module);
    for (const target of next(module)) {
      if (!index.has(target)) {
        visit(target);
        low.set(module, Math.min(low.get(module)!, low.get(target)!));
      } else if (onStack.has(target)) {
        low.set(module, Math.min(low.get(module)!, index.get(target)!));
      }
    }
    if (low.get(module) === index.get(module)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== module);
      components.push(component);
    }
  };
  for (const module of [...graph.keys()].sort()) if (!index.has(module)) visit(module);

  const cycles: string[][] = [];
  for (const component of components) {
    const members = new Set(component);
    const start = [...component].sort()[0]!;
    if (component.length === 1 && !next(start).includes(start)) continue;
    // Breadth-first within the component: the shortest way from start back to start.
    const cameFrom = new Map<string, string>();
    const queue = [start];
    while (!cameFrom.has(start)) {
      const module = queue.shift()!;
      for (const target of next(module)
        .filter((candidate) => members.has(candidate))
        .sort()) {
        if (cameFrom.has(target)) continue;
        cameFrom.set(target, module);
        queue.push(target);
      }
    }
    const backwards = [start];
    for (let module = cameFrom.get(start)!; module !== start; module = cameFrom.get(module)!) backwards.push(module);
    cycles.push([...backwards, start].reverse());
  }
  return cycles.sort((a, b) => a[0]!.localeCompare(b[0]!));
}

/**
 * The top-level folders the function and the bridge need at build time (those of every module
 * they import, transitively) that the Dockerfile does not COPY: its build would not find them.
 */
function foldersMissingFromBuild(graph: ImportGraph, dockerfile: string): string[] {
  const copied = new Set([...dockerfile.matchAll(/^COPY\s+(?!--)(\S+)/gm)].map((match) => match[1]!.split('/')[0]!));
  const reached = new Set<string>();
  const visit = (module: string): void => {
    if (reached.has(module)) return;
    reached.add(module);
    for (const target of graph.get(module)?.modules ?? []) visit(target);
  };
  for (const module of graph.keys()) if (under('functions', 'bridge')(module)) visit(module);
  return [...new Set([...reached].map((module) => module.split('/')[0]!))].filter((folder) => !copied.has(folder)).sort();
}

// --- the scan -------------------------------------------------------------------------------------

function sourceFiles(folder: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(join(REPO_ROOT, folder), { withFileTypes: true })) {
    const path = posix.join(folder, entry.name);
    if (entry.isDirectory()) found.push(...sourceFiles(path));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) found.push(path);
  }
  return found;
}

function exists(path: string): boolean {
  try {
    return statSync(join(REPO_ROOT, path)).isFile();
  } catch {
    return false;
  }
}

/** The project's import graph, read with TypeScript's own lexer (comments and strings are not imports). */
function scanProject(): { graph: ImportGraph; unresolved: string[] } {
  const graph = new Map<string, ModuleImports>();
  const unresolved: string[] = [];
  for (const file of SCANNED.flatMap(sourceFiles).sort()) {
    const { importedFiles } = ts.preProcessFile(readFileSync(join(REPO_ROOT, file), 'utf8'), true, true);
    const modules: string[] = [];
    const packages: string[] = [];
    for (const { fileName: specifier } of importedFiles) {
      if (!specifier.startsWith('.')) {
        packages.push(specifier);
        continue;
      }
      const target = posix.normalize(posix.join(posix.dirname(file), specifier));
      if (exists(target)) modules.push(target);
      else unresolved.push(`${file}: ${specifier}`);
    }
    graph.set(file, { modules: [...new Set(modules)], packages: [...new Set(packages)] });
  }
  return { graph, unresolved };
}

// --- the tests ------------------------------------------------------------------------------------

/** A graph written out by hand: module → the modules and packages it imports. */
function graphOf(edges: Record<string, readonly string[]>): ImportGraph {
  return new Map(
    Object.entries(edges).map(([module, targets]) => [
      module,
      { modules: targets.filter((target) => target.endsWith('.ts')), packages: targets.filter((t) => !t.endsWith('.ts')) },
    ]),
  );
}

describe('the import graph checker', () => {
  it('names a cycle, every forbidden import, and nothing that is allowed', () => {
    const graph = graphOf({
      'functions/engine.ts': ['functions/copy/image.ts', 'functions/contract/index.ts', 'lib/semaphore.ts'],
      'functions/copy/image.ts': ['functions/copy/blob.ts', 'zod'],
      'functions/copy/blob.ts': ['functions/engine.ts'],
      'functions/contract/index.ts': ['functions/contract/naming.ts', 'lib/errors.ts'],
      'functions/contract/naming.ts': ['functions/registry/http.ts'],
      'functions/registry/http.ts': ['bridge/main.ts', 'testbed/ports.ts'],
      'bridge/kube.ts': ['functions/contract/index.ts', 'functions/contract/naming.ts', 'functions/app.ts'],
      'lib/semaphore.ts': ['lib/errors.ts'],
      'lib/errors.ts': ['functions/app.ts', 'vitest'],
      'testbed/system.ts': ['test/support/logs.ts', 'vitest', 'functions/contract/index.ts', 'scripts/bundle-bridge.ts'],
      'bridge/self.ts': ['bridge/self.ts'],
    });
    expect(importGraphProblems(graph)).toEqual([
      'cycle: bridge/self.ts → bridge/self.ts',
      'cycle: functions/copy/blob.ts → functions/engine.ts → functions/copy/image.ts → functions/copy/blob.ts',
      'functions/contract/naming.ts imports functions/registry/http.ts: functions/contract/ stands alone: it may import only itself and lib/',
      'functions/registry/http.ts imports bridge/main.ts: the function knows nothing of the bridge',
      'functions/registry/http.ts imports testbed/ports.ts: production code imports no test tooling',
      'bridge/kube.ts imports functions/app.ts: bridge/ may use only the published contract of the function (functions/contract/)',
      'lib/errors.ts imports functions/app.ts: lib/ imports nothing of the project',
      'lib/errors.ts imports vitest: production code imports no test tooling',
      'testbed/system.ts imports test/support/logs.ts: testbed/ runs outside vitest too (npm run demo, the benchmarks): nothing from test/, no vitest',
      'testbed/system.ts imports vitest: testbed/ runs outside vitest too (npm run demo, the benchmarks): nothing from test/, no vitest',
    ]);
  });

  it('names a folder the build needs and the Dockerfile does not copy', () => {
    const graph = graphOf({
      'functions/node.ts': ['functions/engine.ts'],
      'functions/engine.ts': ['lib/semaphore.ts'],
      'bridge/main.ts': ['functions/contract/index.ts'],
      'testbed/system.ts': ['scripts/bundle-bridge.ts'],
    });
    expect(foldersMissingFromBuild(graph, 'COPY functions ./functions\nCOPY bridge ./bridge\n')).toEqual(['lib']);
    expect(foldersMissingFromBuild(graph, 'COPY functions ./functions\nCOPY bridge ./bridge\nCOPY lib ./lib\n')).toEqual([]);
  });

  it('finds nothing in a graph without faults', () => {
    const graph = graphOf({
      'functions/engine.ts': ['functions/copy/image.ts', 'functions/contract/index.ts', 'lib/semaphore.ts'],
      'functions/copy/image.ts': ['functions/contract/index.ts'],
      'functions/contract/index.ts': ['lib/errors.ts', 'zod'],
      'bridge/kube.ts': ['functions/contract/index.ts', 'lib/semaphore.ts'],
      'testbed/system.ts': ['functions/contract/index.ts', 'bridge/kube.ts', 'scripts/bundle-bridge.ts'],
    });
    expect(importGraphProblems(graph)).toEqual([]);
  });
});

describe('the project', () => {
  const { graph, unresolved } = scanProject();

  it('is what the scan read: every module of the scanned folders, their imports resolved', () => {
    expect(unresolved).toEqual([]);
    for (const folder of SCANNED) expect([...graph.keys()].some(under(folder)), `${folder}/ was scanned`).toBe(true);
    // Edges that hold in any layout of these folders, so an empty or broken scan cannot pass.
    const importers = (target: string) => [...graph].filter(([, imports]) => imports.modules.includes(target));
    expect(importers('functions/contract/index.ts').some(([module]) => under('bridge')(module))).toBe(true);
    expect(importers('functions/contract/index.ts').some(([module]) => under('functions')(module))).toBe(true);
    expect([...graph.values()].some((imports) => imports.packages.includes('zod'))).toBe(true);
  });

  it('has no import cycle and no import across the layout', () => {
    expect(importGraphProblems(graph)).toEqual([]);
  });

  it('is whole in the container build: the Dockerfile copies every folder the function and the bridge import', () => {
    expect(foldersMissingFromBuild(graph, readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8'))).toEqual([]);
  });
});
