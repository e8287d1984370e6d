from taskrunner.cli import main

raise SystemExit(main())
