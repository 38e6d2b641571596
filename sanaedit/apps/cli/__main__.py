from sanaedit.apps.cli import main

raise SystemExit(main())
