import { startNodeFunction } from '../../testbed/clone-function.ts';
import { describeHostileRegistries } from './hostile-scenarios.ts';

describeHostileRegistries('node', startNodeFunction);
