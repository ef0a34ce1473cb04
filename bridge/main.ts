// The bridge's entry point: `node bridge/main.ts` (or dist/bridge/main.js in the container).
// Configuration from the environment; SIGTERM stops the workers after their current reconcile,
// releases the lease so a successor takes over at once, and exits.
//
// `node bridge/main.ts uninstall [--restore-images] [--dry-run]` undoes the controller's work
// instead (bridge/uninstall.ts), with the credentials of KUBECONFIG.

import { createLogger, startBridge } from './app.ts';
import { ConfigError, loadConfig } from './config.ts';
import { runUninstall } from './uninstall-command.ts';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger(config.logLevel);
  // In a pod, the downward API names it (the manifests set both): the leader labels it.
  const { POD_NAME: name, POD_NAMESPACE: namespace } = process.env;
  const pod = name && namespace ? { name, namespace } : undefined;
  const bridge = await startBridge({ config, logger, ...(pod && { pod }) });

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    // The pod's grace period is 30 s by default; leave before the kubelet's SIGKILL.
    const force = setTimeout(() => process.exit(1), 25_000);
    force.unref();
    bridge.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ error: String(error) }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

if (import.meta.main) {
  if (process.argv[2] === 'uninstall') process.exit(await runUninstall(process.argv.slice(3), process.env));
  else await main();
}
