// Helm for the chart's tests and the Helm install of the system harness: the binary that
// scripts/helm-binary builds from the Go module proxy (Helm 4, or 3; cached outside the repository), run
// against a cluster of testbed/kube-cluster.ts or without one (template, lint).
//
//   const helm = await helmRunner();
//   const { stdout } = await helm(['template', 'release', 'k8s/chart', '--set', 'backup.namespace=x']);

import { loadAllYaml } from '@kubernetes/client-node';
import { execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from './processes.ts';

/** The chart, where the repository keeps it. */
export const CHART_DIR = join(REPO_ROOT, 'k8s/chart');

export interface HelmResult {
  readonly stdout: string;
  readonly stderr: string;
  /** helm's exit code (0 = success). */
  readonly code: number;
}

export interface HelmOptions {
  /** The cluster to talk to (install, upgrade, uninstall, status); none for template and lint. */
  readonly kubeconfig?: string;
  /** Written to helm's stdin (`-f -`). */
  readonly input?: string;
  /** Default 120 s. */
  readonly timeoutMs?: number;
}

export type Helm = (args: readonly string[], options?: HelmOptions) => Promise<HelmResult>;

/** The chart supports both; the tests use Helm 4 and check that Helm 3 agrees with it. */
export type HelmMajor = 3 | 4;

const binaries = new Map<HelmMajor, Promise<string>>();

/**
 * $HELM_BINARY / $HELM3_BINARY (scripts/test sets them), else what `scripts/helm-binary [3]`
 * prints (it builds helm once).
 */
export function helmBinary(major: HelmMajor = 4): Promise<string> {
  const fromEnvironment = major === 4 ? process.env.HELM_BINARY : process.env.HELM3_BINARY;
  let binary = binaries.get(major);
  binary ??= fromEnvironment
    ? Promise.resolve(fromEnvironment)
    : new Promise((resolve, reject) => {
        // The script's progress goes to the test output: a cold build takes minutes.
        const child = spawn('bash', [join(REPO_ROOT, 'scripts/helm-binary'), String(major)], {
          cwd: REPO_ROOT,
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        let stdout = '';
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
        child.on('error', reject);
        child.on('close', (code) => {
          const path = stdout.trim().split('\n').at(-1)?.trim();
          if (code === 0 && path) resolve(path);
          else reject(new Error(`scripts/helm-binary ${major} failed (exit ${code})`));
        });
      });
  binaries.set(major, binary);
  return binary;
}

/** Runs helm; never throws for a non-zero exit (the result says). Helm's own state stays in `stateDir`. */
export async function helmRunner(stateDir?: string, major: HelmMajor = 4): Promise<Helm> {
  const path = await helmBinary(major);
  return (args, options = {}) =>
    new Promise((resolve, reject) => {
      const child = execFile(
        path,
        [...(options.kubeconfig === undefined ? [] : ['--kubeconfig', options.kubeconfig]), ...args],
        {
          cwd: REPO_ROOT,
          timeout: options.timeoutMs ?? 120_000,
          maxBuffer: 64 * 1024 * 1024,
          env: {
            PATH: process.env.PATH ?? '',
            HOME: process.env.HOME ?? '',
            // Helm's caches and config, away from the user's (no repositories, no plugins).
            ...(stateDir !== undefined && {
              HELM_CACHE_HOME: join(stateDir, 'cache'),
              HELM_CONFIG_HOME: join(stateDir, 'config'),
              HELM_DATA_HOME: join(stateDir, 'data'),
            }),
          },
        },
        (error, stdout, stderr) => {
          const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
          if (error !== null && code === -1 && !stderr) return reject(error);
          resolve({ stdout, stderr, code });
        },
      );
      if (options.input !== undefined) child.stdin!.end(options.input);
      else child.stdin!.end();
    });
}

/** The objects of a multi-document YAML stream (helm template's output), without empty documents. */
export function manifestsOf(stream: string): KubeObject[] {
  return loadAllYaml(stream).filter(
    (object): object is KubeObject => typeof object === 'object' && object !== null && 'kind' in object,
  );
}

/** The fields of a Kubernetes object every test reads. */
export interface KubeObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace?: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly annotations?: Readonly<Record<string, string>>;
  };
  readonly [field: string]: unknown;
}
