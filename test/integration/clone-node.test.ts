import { startNodeFunction } from '../../testbed/clone-function.ts';
import { describeCloneScenarios } from './clone-scenarios.ts';

describeCloneScenarios('node', startNodeFunction);
