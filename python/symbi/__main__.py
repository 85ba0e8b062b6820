from symbi.cli.main import main

raise SystemExit(main())
