import { startWorkerFunction } from '../../testbed/clone-function.ts';
import { describeCloneScenarios } from './clone-scenarios.ts';

describeCloneScenarios('worker', startWorkerFunction);
