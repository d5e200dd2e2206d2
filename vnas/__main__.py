from vnas.cli import main

raise SystemExit(main())
