from experiments.engine.cli import main

raise SystemExit(main())
