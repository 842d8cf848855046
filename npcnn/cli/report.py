"""``npcnn report DIR``: write DIR/report.html from what DIR holds."""


def register(sub):
    p = sub.add_parser("report", help="write a self-contained HTML report of a run or reproduce directory",
                       description="Write report.html from a run folder, or from a `npcnn reproduce` directory "
                                   "with both variants. Stages not run yet show as placeholders.")
    p.add_argument("directory", help="a run folder or a reproduce directory")
    p.add_argument("--output", help="where to write the page (default: DIRECTORY/report.html)")
    p.set_defaults(func=run)


def run(args):
    from ..report import write_report

    path = write_report(args.directory, args.output)
    print(f"report written to {path}")
