import { startWorkerFunction } from '../../testbed/clone-function.ts';
import { describeHostileRegistries } from './hostile-scenarios.ts';

describeHostileRegistries('worker', startWorkerFunction);
