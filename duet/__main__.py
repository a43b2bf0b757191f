from duet.cli import main

raise SystemExit(main())
