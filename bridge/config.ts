// The bridge's configuration from environment variables, validated once at start. Errors name the
// variable and what is wrong with it, never a secret's value.

import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { z } from 'zod';
import {
  backupEnvironment,
  backupSettings,
  DEFAULT_MAX_IMAGES_PER_REQUEST,
  type BackupLocation,
} from '../functions/contract/index.ts';
import {
  boolean,
  ConfigError,
  httpUrl,
  integer,
  list,
  logLevel,
  oneOf,
  optionalString,
  parseEnvironment,
  secret,
  type Environment,
  type LogLevel,
} from '../lib/env.ts';
import { printable } from '../lib/text.ts';
import { isWorkloadKind, MODES, WORKLOAD_KINDS, type Mode, type WorkloadKind } from './workload.ts';

export { ConfigError, type Environment };

export interface BridgeConfig {
  /** Path(s) of a kubeconfig; undefined means in-cluster (the pod's ServiceAccount). */
  readonly kubeconfig: string | undefined;
  readonly functionUrl: string;
  readonly authToken: string;
  readonly callbackSecret: string;
  /** Where the function posts results; undefined: call the function synchronously (FaaS mode). */
  readonly callbackUrl: string | undefined;
  /** Why a CALLBACK_URL that was set is not used (the function cannot reach it), for the start log. */
  readonly callbackUnused?: string;
  /**
   * Why workloads' pull-secret credentials are not sent to the function: FUNCTION_URL is plain
   * HTTP to a host outside the cluster. Undefined: they are sent.
   */
  readonly credentialsWithheld?: string;
  readonly backup: BackupLocation;
  /** Always holds kube-system. */
  readonly ignoredNamespaces: ReadonlySet<string>;
  /** The kinds watched (WATCH_KINDS). */
  readonly watchKinds: readonly WorkloadKind[];
  /** pin or backup-only, for workloads whose namespace and own annotation say nothing. */
  readonly defaultMode: Mode;
  readonly port: number;
  readonly workers: number;
  readonly resyncSeconds: number;
  /** How long a copy may take before its request counts as lost and is made again. */
  readonly cloneTimeoutSeconds: number;
  /** The function's MAX_IMAGES_PER_REQUEST (the same key in the shared ConfigMap): larger sets are split. */
  readonly maxImagesPerRequest: number;
  readonly leaderElection:
    | { readonly enabled: false }
    | { readonly enabled: true; readonly namespace: string; readonly identity: string; readonly leaseName: string };
  readonly logLevel: LogLevel;
}

export const LEASE_NAME = 'image-clone-controller';
const SERVICE_ACCOUNT_NAMESPACE_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

const environment = z.object({
  ...backupEnvironment,
  KUBECONFIG: optionalString,
  KUBERNETES_SERVICE_HOST: optionalString,
  FUNCTION_URL: httpUrl('the clone function base URL').refine(
    (value) => value !== undefined,
    'is required (the clone function base URL)',
  ),
  AUTH_TOKEN: secret('the bearer token the clone function expects'),
  CALLBACK_SECRET: secret('the HMAC key shared with the clone function'),
  CALLBACK_URL: httpUrl("this bridge's /callback as the function reaches it"),
  IGNORE_NAMESPACES: list.transform((names, ctx) => {
    for (const name of names) {
      if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name) || name.length > 63) {
        ctx.addIssue({ code: 'custom', message: `"${name.slice(0, 80)}" is not a namespace name` });
      }
    }
    return new Set(['kube-system', ...names]);
  }),
  WATCH_KINDS: list.transform((kinds, ctx): WorkloadKind[] => {
    if (kinds.length === 0) return [...WORKLOAD_KINDS];
    const unknown = kinds.filter((kind) => !isWorkloadKind(kind));
    if (unknown.length > 0) {
      ctx.addIssue({
        code: 'custom',
        message: `"${printable(unknown.join(','), 80)}" is not a kind the controller watches (${WORKLOAD_KINDS.join(', ')})`,
      });
      return z.NEVER;
    }
    return [...new Set(kinds as WorkloadKind[])];
  }),
  DEFAULT_MODE: oneOf(MODES).transform((mode): Mode => mode ?? 'pin'),
  PORT: integer(8080, 1, 65535),
  WORKERS: integer(4, 1, 256),
  RESYNC_SECONDS: integer(300, 10, 86_400),
  CLONE_TIMEOUT_SECONDS: integer(1800, 10, 86_400),
  MAX_IMAGES_PER_REQUEST: integer(DEFAULT_MAX_IMAGES_PER_REQUEST, 1, 1000),
  LEADER_ELECTION: boolean(undefined),
  POD_NAMESPACE: optionalString,
  POD_NAME: optionalString,
  LOG_LEVEL: logLevel,
});

export interface ConfigSources {
  /** Reads the pod's namespace when POD_NAMESPACE is unset (injectable for tests). */
  readonly readNamespaceFile?: () => string | undefined;
  readonly hostname?: () => string;
}

export function loadConfig(env: Environment, sources: ConfigSources = {}): BridgeConfig {
  const values = parseEnvironment(environment, env);
  const inCluster = values.KUBECONFIG === undefined;
  if (inCluster && values.KUBERNETES_SERVICE_HOST === undefined) {
    throw new ConfigError('invalid configuration: KUBECONFIG is required outside a cluster (no KUBERNETES_SERVICE_HOST)');
  }
  const { backup } = backupSettings(values);

  let leaderElection: BridgeConfig['leaderElection'] = { enabled: false };
  if (values.LEADER_ELECTION ?? inCluster) {
    const namespace = values.POD_NAMESPACE ?? (sources.readNamespaceFile ?? readServiceAccountNamespace)();
    if (namespace === undefined) {
      throw new ConfigError('invalid configuration: POD_NAMESPACE is required for LEADER_ELECTION (the namespace of the lease)');
    }
    const identity = values.POD_NAME ?? (sources.hostname ?? hostname)();
    leaderElection = { enabled: true, namespace, identity, leaseName: LEASE_NAME };
  }

  const functionUrl = values.FUNCTION_URL!.replace(/\/+$/, '');
  const callbackUnused =
    values.CALLBACK_URL !== undefined && !canReach(functionUrl, values.CALLBACK_URL)
      ? `the function at ${new URL(functionUrl).host} is outside the cluster and cannot reach ` +
        `${new URL(values.CALLBACK_URL).host}, a cluster Service: calling it synchronously`
      : undefined;

  return {
    kubeconfig: values.KUBECONFIG,
    functionUrl,
    authToken: values.AUTH_TOKEN,
    callbackSecret: values.CALLBACK_SECRET,
    callbackUrl: callbackUnused === undefined ? values.CALLBACK_URL : undefined,
    ...(callbackUnused !== undefined && { callbackUnused }),
    ...(crossesNetworkInPlainText(new URL(functionUrl)) && {
      credentialsWithheld: `FUNCTION_URL (${new URL(functionUrl).host}) is plain HTTP outside the cluster`,
    }),
    backup,
    ignoredNamespaces: values.IGNORE_NAMESPACES,
    watchKinds: values.WATCH_KINDS,
    defaultMode: values.DEFAULT_MODE,
    port: values.PORT,
    workers: values.WORKERS,
    resyncSeconds: values.RESYNC_SECONDS,
    cloneTimeoutSeconds: values.CLONE_TIMEOUT_SECONDS,
    maxImagesPerRequest: values.MAX_IMAGES_PER_REQUEST,
    leaderElection,
    logLevel: values.LOG_LEVEL,
  };
}

/** A Kubernetes Service's DNS name (`name.namespace.svc`, `….svc.cluster.local`): resolvable only inside a cluster. */
function isClusterServiceHost(host: string): boolean {
  return /\.svc(\.|$)/.test(host.toLowerCase());
}

/**
 * A function that is plainly not in the cluster: HTTPS to a public-style name (a Worker's
 * `*.workers.dev` or a custom domain), not a Service name, a short name or an address. Taking an
 * in-cluster function for an outside one (HTTPS to a public-style name) costs nothing: the bridge
 * calls it synchronously, which works everywhere. The other way round (an outside function over
 * plain HTTP) keeps the callbacks as configured.
 */
function isOutsideCluster(functionUrl: URL): boolean {
  const host = functionUrl.hostname;
  return (
    functionUrl.protocol === 'https:' && host.includes('.') && !isClusterServiceHost(host) && !isIP(host.replace(/^\[|\]$/g, ''))
  );
}

/**
 * Whether a function at `functionUrl` can post to `callbackUrl`. The one case known not to work:
 * the callback is a cluster Service name and the function is outside the cluster (a Worker). So
 * switching FUNCTION_URL to a Worker is all it takes; a CALLBACK_URL the Worker can reach (an
 * Ingress) is still used.
 */
export function canReach(functionUrl: string, callbackUrl: string): boolean {
  return !(isClusterServiceHost(new URL(callbackUrl).hostname) && isOutsideCluster(new URL(functionUrl)));
}

/**
 * Plain HTTP to a host that is plainly not in the cluster (nor this machine): a Service name, a
 * short name, a private or loopback address count as inside. Credentials never travel so.
 */
export function crossesNetworkInPlainText(url: URL): boolean {
  if (url.protocol !== 'http:') return false;
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (isClusterServiceHost(host) || !host.includes('.') || host === 'localhost') return false;
  return !isPrivateAddress(host);
}

function isPrivateAddress(host: string): boolean {
  if (isIP(host) === 4) return /^(10\.|127\.|192\.168\.|172\.(1[6-9]|2\d|3[01])\.)/.test(host);
  if (isIP(host) === 6) return host === '::1' || /^f[cd]/.test(host);
  return false;
}

function readServiceAccountNamespace(): string | undefined {
  if (!existsSync(SERVICE_ACCOUNT_NAMESPACE_FILE)) return undefined;
  const namespace = readFileSync(SERVICE_ACCOUNT_NAMESPACE_FILE, 'utf8').trim();
  return namespace === '' ? undefined : namespace;
}
