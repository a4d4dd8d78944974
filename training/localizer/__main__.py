from training.localizer.cli import main

raise SystemExit(main())
