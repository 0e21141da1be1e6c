export * from "./matvec";
