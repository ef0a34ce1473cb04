// `uninstall` on the command line: flags, the kubeconfig, and where the backups live (read from
// the controller's ConfigMap, so that only images under the backup are restored).

import type { KubeConfig } from '@kubernetes/client-node';
import { backupSettings, backupEnvironment, type BackupLocation } from '../functions/contract/index.ts';
import { parseEnvironment, type Environment } from '../lib/env.ts';
import { describeError } from '../lib/errors.ts';
import { createLogger } from './app.ts';
import { API_TIMEOUT_MS, kubeJson, loadKubeConfig, statusCode } from './kube/api.ts';
import { uninstall } from './uninstall.ts';
import { parseArgs } from 'node:util';
import { z } from 'zod';

const USAGE =
  'usage: uninstall [--restore-images] [--dry-run] [--namespace <controller namespace>] [--config-map <its ConfigMap>]';

/** Runs the command; resolves the process's exit code. */
export async function runUninstall(args: readonly string[], env: Environment): Promise<number> {
  let flags;
  try {
    flags = parseArgs({
      args: [...args],
      options: {
        'restore-images': { type: 'boolean', default: false },
        'dry-run': { type: 'boolean', default: false },
        namespace: { type: 'string', default: env.POD_NAMESPACE ?? 'image-clone-controller' },
        // The chart names it after the release; k8s/setup's is image-cloner-config.
        'config-map': { type: 'string', default: 'image-cloner-config' },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    process.stderr.write(`${describeError(error)}\n${USAGE}\n`);
    return 2;
  }
  const { 'restore-images': restoreImages, 'dry-run': dryRun, namespace, 'config-map': configMapName } = flags;
  const logger = createLogger('info');
  const kubeConfig = loadKubeConfig(env.KUBECONFIG || undefined);
  const backup = await backupOfController(kubeConfig, namespace, configMapName).catch((error: unknown) => {
    logger.warn(
      { error: describeError(error) },
      "the controller's ConfigMap is not readable: any image pinned by digest counts as a backup",
    );
    return undefined;
  });
  const summary = await uninstall({ kubeConfig, logger, restoreImages, dryRun, ...(backup && { backup }) });
  logger.info({ ...summary, skipped: summary.skipped.length }, dryRun ? 'dry run done' : 'uninstall done');
  for (const workload of summary.skipped) process.stderr.write(`left as it is (changed meanwhile, run again): ${workload}\n`);
  return summary.skipped.length > 0 ? 1 : 0;
}

async function backupOfController(kubeConfig: KubeConfig, namespace: string, name: string): Promise<BackupLocation | undefined> {
  let configMap: { data?: Record<string, string> };
  try {
    configMap = await kubeJson(kubeConfig, {
      method: 'GET',
      path: `/api/v1/namespaces/${encodeURIComponent(namespace)}/configmaps/${encodeURIComponent(name)}`,
      timeoutMs: API_TIMEOUT_MS,
    });
  } catch (error) {
    if (statusCode(error) === 404) return undefined;
    throw error;
  }
  return backupSettings(parseEnvironment(z.object(backupEnvironment), configMap.data ?? {})).backup;
}
